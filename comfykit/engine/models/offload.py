"""Partial loading ("lowvram"): a model larger than the device's free memory keeps part of its weights on the host
and streams them to the device layer by layer during the forward pass.

`stream(modules, device, budget)` makes layers resident on the device in module order while they fit in
`budget` bytes; every other standard layer (Linear, Conv, Embedding, norms) keeps its weights on the host (pinned on
CUDA, up to half the free host RAM) and gets a pre-hook that copies them in and a hook that lets them go after the
layer ran. fp8 weights travel as fp8 (half the bytes of bf16) and `fp8.CastLinear` upcasts them on the device, one
layer at a time.

>>> streamer = stream([model.network], "cuda", budget=4 << 30)
>>> model.apply(x, t, inputs)          # the resident layers run in place, the others are copied in per call
>>> streamer.release()                 # hooks removed, every weight back on the host
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: Layers whose forward reads only their own weights: the ones that can be streamed safely
STREAMABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Embedding, nn.GroupNorm,
              nn.LayerNorm)


def model_modules(model: Any) -> list[nn.Module]:
    """The torch modules holding a loaded model's weights (DiffusionModel, TextEncoder, VAE or a module)."""
    if isinstance(model, nn.Module):
        return [model]
    if hasattr(model, "_modules") and callable(model._modules):  # text encoders with a T5
        return list(model._modules())
    for attr in ("network", "module"):
        value = getattr(model, attr, None)
        if isinstance(value, nn.Module):
            return [value]
    clips = getattr(model, "clips", None)
    if isinstance(clips, dict):
        return list(clips.values())
    return []


def tensor_bytes(tensors: Any, dtype: torch.dtype | None = None) -> int:
    """Bytes of distinct tensors; with `dtype`, floating non-fp8 ones counted as if stored in it."""
    from .fp8 import is_fp8

    seen: dict[tuple, int] = {}
    for t in tensors:
        if t is None or t.is_meta:
            continue
        size = t.element_size()
        if dtype is not None and t.is_floating_point() and not is_fp8(t) and t.ndim:
            size = dtype.itemsize
        key = (t.data_ptr(), t.device.type, tuple(t.shape)) if t.numel() else (id(t),)
        seen[key] = t.numel() * size
    return sum(seen.values())


def model_bytes(model: Any, dtype: torch.dtype | None = None) -> int:
    """Weight bytes of a loaded model (parameters and buffers of all its modules), optionally in `dtype`."""
    tensors = [t for m in model_modules(model) for t in (*m.parameters(), *m.buffers())]
    return tensor_bytes(tensors, dtype)


def host_available() -> int:
    """Host RAM the kernel can hand out now (MemAvailable), in bytes; a large number where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


def pin(t: torch.Tensor) -> torch.Tensor:
    """A page-locked copy of host tensor `t` (fast, asynchronous copies to CUDA), or `t` itself where pinning
    fails (no CUDA, or the driver refuses more locked memory)."""
    try:
        return t.pin_memory()
    except RuntimeError:
        return t


def _own_tensors(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters(recurse=False)]


@dataclass
class Streamer:
    """The hooks and host copies of one partially loaded model; `release()` undoes it."""

    device: torch.device
    resident_bytes: int = 0
    streamed_layers: int = 0
    streamed_bytes: int = 0  # bytes copied to the device so far (grows every forward)
    peak_bytes: int = 0  # the most weight bytes on the device at once (resident + one streamed layer)
    _hooks: list[Any] = field(default_factory=list)
    _host: dict[int, tuple[nn.Parameter, torch.Tensor]] = field(default_factory=dict)
    _roots: list[nn.Module] = field(default_factory=list)
    _in_flight: int = 0

    def _bring(self, module: nn.Module, _args: Any) -> None:
        size = 0
        for p in _own_tensors(module):
            host = self._host[id(p)][1]
            p.data = host.to(self.device, non_blocking=host.is_pinned())
            if p.data.data_ptr() == host.data_ptr():  # a "device" that is the host (CPU tests): copy anyway
                p.data = host.clone()
            size += host.numel() * host.element_size()
        self.streamed_bytes += size
        self._in_flight += size
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes + self._in_flight)

    def _drop(self, module: nn.Module, _args: Any, _out: Any) -> None:
        for p in _own_tensors(module):
            host = self._host[id(p)][1]
            self._in_flight -= host.numel() * host.element_size()
            p.data = host

    def release(self) -> None:
        """Remove the hooks; streamed weights stay on the host, resident ones are moved back there too."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for p, host in self._host.values():
            p.data = host
        self._host.clear()
        from .fp8 import module_to

        for root in self._roots:
            module_to(root, "cpu")  # the resident layers and the buffers (same Parameter objects)
            root.__dict__.pop("_comfykit_device", None)
        self._roots.clear()


def stream(modules: list[nn.Module], device: Any, budget: int, dtype: torch.dtype | None = None) -> Streamer:
    """Partially load `modules` (on the host, in their compute dtype) onto `device` within `budget` bytes of weights.

    Layers are taken in module order: each one that still fits moves to the device; the streamable layers that
    do not fit get hooks that copy their weights in for their forward only. Everything else (custom modules'
    own parameters, buffers) always moves, since code outside those layers may read it.
    """
    from .fp8 import module_to

    device = torch.device(device)
    # page-locked memory cannot be paged out: pin at most half the host RAM free now (a Colab has 12.7 GB)
    pin_left = host_available() // 2 if device.type == "cuda" else 0
    streamer = Streamer(device)
    for root in modules:
        if dtype is not None:
            module_to(root, "cpu", dtype)
        for module in root.modules():
            own = _own_tensors(module)
            if not own:
                continue
            size = tensor_bytes(own)
            if not isinstance(module, STREAMABLE) or streamer.resident_bytes + size <= budget:
                module_to_own(module, device)
                streamer.resident_bytes += size
                continue
            for p in own:
                host = p.data
                if host.nbytes <= pin_left:
                    host = pin(host)
                    pin_left -= host.nbytes if host is not p.data else 0
                p.data = host
                streamer._host[id(p)] = (p, host)
            streamer.streamed_layers += 1
            streamer._hooks.append(module.register_forward_pre_hook(streamer._bring))
            streamer._hooks.append(module.register_forward_hook(streamer._drop))
        for buffer_owner in root.modules():
            for name, b in list(buffer_owner.named_buffers(recurse=False)):
                if b is not None and b.device != device:
                    setattr(buffer_owner, name, b.to(device))
        root._comfykit_device = device  # module_device(): where inputs go, whatever the first weight's place
        streamer._roots.append(root)
    streamer.peak_bytes = streamer.resident_bytes
    return streamer


def module_to_own(module: nn.Module, device: torch.device) -> None:
    """Move the module's own parameters (not its children's) to `device`, keeping their dtype."""
    for p in _own_tensors(module):
        if p.device != device:
            p.data = p.data.to(device)
