"""fp8 weights that stay fp8 on the device and are upcast per layer, for any `nn.Module` (T5, Flux, SD3, ...).

A `float8_e4m3fn` / `float8_e5m2` checkpoint halves the weight memory of bf16 (FLUX.1 fits a 16 GB GPU this way).
`apply_fp8` turns every `nn.Linear` / `nn.Embedding` whose weight is fp8 into a `CastLinear` / `CastEmbedding`: the
weight tensor stays fp8 and each call upcasts it to the input's dtype, as ComfyUI's `manual_cast` ops do.

"Scaled fp8" files (e.g. `t5xxl_fp8_e4m3fn_scaled.safetensors`) store `w / scale` in fp8 plus a float32
`<layer>.scale_weight` per Linear (and a `scaled_fp8` marker key). ComfyUI multiplies the upcast weight by
`scale_weight` (or, when that is cheaper, the input: the same product). `<layer>.scale_input` only matters on
ComfyUI's fp8-matmul path (`*_fast` weight dtypes on fp8-capable GPUs); we keep it on the layer but always upcast.

>>> sd = read_state_dict("t5xxl_fp8_e4m3fn_scaled.safetensors")
>>> weights, scales = split_scales(sd)
>>> module.load_state_dict(weights, assign=True)        # assign keeps the fp8 dtype
>>> apply_fp8(module, scales, compute_dtype=torch.bfloat16)
>>> module_to(module, "cuda", torch.bfloat16)           # fp8 weights move but stay fp8
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ModelError

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_KEYS = ("scale_weight", "scale_input")
MARKER_KEY = "scaled_fp8"  # ComfyUI's zero-size tensor whose dtype names the fp8 format of a scaled file


def is_fp8(t: Any) -> bool:
    """Whether `t` is a tensor stored in one of torch's fp8 formats."""
    return isinstance(t, torch.Tensor) and t.dtype in FP8_DTYPES


def fp8_dtype(sd: dict[str, Any]) -> torch.dtype | None:
    """The fp8 format of a state dict (the scaled-fp8 marker's, else the first fp8 tensor's), or None."""
    for key, value in sd.items():
        if key.endswith(MARKER_KEY) and isinstance(value, torch.Tensor):
            return value.dtype
    return next((v.dtype for v in sd.values() if is_fp8(v)), None)


def split_scales(sd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """(weights, {layer path: {"scale_weight": t, "scale_input": t}}); the `scaled_fp8` marker is dropped."""
    weights: dict[str, Any] = {}
    scales: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        layer, _, leaf = key.rpartition(".")
        if leaf in SCALE_KEYS:
            scales.setdefault(layer, {})[leaf] = value
        elif leaf != MARKER_KEY:
            weights[key] = value
    return weights, scales


def pop_scales(sd: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """Take the scaled-fp8 scales (and the `scaled_fp8` marker) out of `sd` in place; returns them by layer."""
    scales: dict[str, dict[str, torch.Tensor]] = {}
    for key in [k for k in sd if k.rpartition(".")[2] in (*SCALE_KEYS, MARKER_KEY) or k == MARKER_KEY]:
        layer, _, leaf = key.rpartition(".")
        value = sd.pop(key)
        if leaf in SCALE_KEYS:
            scales.setdefault(layer, {})[leaf] = value
    return scales


def dequantize(sd: dict[str, Any], dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The plain state dict an fp8 / scaled fp8 one stands for: fp8 tensors in `dtype`, times their scale_weight."""
    weights, scales = split_scales(sd)
    out = {}
    for key, value in weights.items():
        layer, _, leaf = key.rpartition(".")
        scale = scales.get(layer, {}).get("scale_weight") if leaf == "weight" else None
        if scale is not None:
            value = value.to(dtype) * scale.to(dtype)
        elif is_fp8(value):
            value = value.to(dtype)
        out[key] = value
    return out


def _scale(module: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor | None:
    s = getattr(module, name, None)
    return None if s is None else s.to(device=x.device, dtype=x.dtype)


class CastLinear(nn.Linear):
    """`nn.Linear` whose weight keeps its storage dtype (fp8, fp16, ...) and is upcast to the input's per call."""

    scale_weight: torch.Tensor | None
    scale_input: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        w = self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        s = _scale(self, "scale_weight", x)
        if s is None:
            return F.linear(x, w, b)
        # why two branches: scaling whichever of weight and input is smaller is ComfyUI's choice (same product)
        if w.numel() < x.numel():
            return F.linear(x, w * s, b)
        return F.linear(x * s, w, b)


class CastEmbedding(nn.Embedding):
    """`nn.Embedding` whose table keeps its storage dtype; looked-up rows come out in `out_dtype`."""

    out_dtype: torch.dtype
    scale_weight: torch.Tensor | None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # noqa: D102
        w = self.weight
        if is_fp8(w):  # gather the raw bytes: index_select of fp8 is not implemented on every device
            rows = F.embedding(ids, w.view(torch.uint8)).view(w.dtype).to(self.out_dtype)
        else:
            rows = F.embedding(ids, w).to(self.out_dtype)
        s = _scale(self, "scale_weight", rows)
        return rows if s is None else rows * s


def _cast(module: nn.Module, cls: type, layer_scales: dict[str, torch.Tensor], compute_dtype: torch.dtype) -> None:
    module.__class__ = cls
    for name in SCALE_KEYS:
        value = layer_scales.get(name)
        module.register_buffer(name, None if value is None else value.detach().float().to(module.weight.device))
    if cls is CastEmbedding:
        module.out_dtype = compute_dtype


def cast_layers(module: nn.Module, scales: dict[str, dict[str, torch.Tensor]] | None = None, *,
                compute_dtype: torch.dtype = torch.float32, only_fp8: bool = False) -> nn.Module:
    """Make Linear/Embedding layers upcast their weights per call (all of them, or `only_fp8` ones); in place.

    Other fp8 parameters (norm weights, biases, convolutions) are small: they are upcast to `compute_dtype` once.
    """
    scales = dict(scales or {})
    for path, m in module.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            layer_scales = scales.pop(path, {})
            if only_fp8 and not is_fp8(m.weight) and not layer_scales:
                continue
            if not isinstance(m, (CastLinear, CastEmbedding)):
                _cast(m, CastLinear if isinstance(m, nn.Linear) else CastEmbedding, layer_scales, compute_dtype)
            elif layer_scales:
                _cast(m, type(m), layer_scales, compute_dtype)
            if isinstance(m, nn.Linear) and is_fp8(m.bias):
                m.bias = nn.Parameter(m.bias.to(compute_dtype), requires_grad=False)
        else:
            for name, p in list(m.named_parameters(recurse=False)):
                if is_fp8(p):
                    setattr(m, name, nn.Parameter(p.to(compute_dtype), requires_grad=False))
            for name, b in list(m.named_buffers(recurse=False)):
                if is_fp8(b):
                    setattr(m, name, b.to(compute_dtype))
    if scales:
        path = next(iter(scales))
        raise ModelError(f"scale_weight/scale_input for {path!r}, which is not a Linear layer of this model: "
                         "the scaled fp8 file does not fit the architecture read off its shapes")
    return module


def apply_fp8(module: nn.Module, state_dict: dict[str, Any] | None = None, *,
              compute_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Keep fp8 Linear/Embedding weights fp8 and upcast them per call; `state_dict` supplies scaled-fp8 scales.

    `state_dict` may be the file's whole state dict or the scales half of `split_scales`. In place; returns `module`.
    """
    scales = state_dict or {}
    if scales and not all(isinstance(v, dict) for v in scales.values()):
        scales = split_scales(scales)[1]
    return cast_layers(module, scales, compute_dtype=compute_dtype, only_fp8=True)


def quantize_fp8(module: nn.Module, dtype: torch.dtype = torch.float8_e4m3fn, *,
                 compute_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Store every Linear weight in `dtype` (UNETLoader's `weight_dtype` fp8_e4m3fn / fp8_e5m2); in place."""
    if dtype not in FP8_DTYPES:
        raise ValueError(f"quantize_fp8: dtype must be one of {FP8_DTYPES}, got {dtype}")
    limit = torch.finfo(dtype).max
    for m in module.modules():
        if isinstance(m, nn.Linear) and not is_fp8(m.weight):
            # why clamp: e4m3fn has no infinity, values past 448 would turn into NaN instead of saturating
            m.weight = nn.Parameter(m.weight.detach().clamp(-limit, limit).to(dtype), requires_grad=False)
    return cast_layers(module, compute_dtype=compute_dtype, only_fp8=True)


def module_to(module: nn.Module, device: Any = None, dtype: torch.dtype | None = None) -> nn.Module:
    """`module.to(device, dtype)` that leaves fp8 tensors and the 0-d fp8 scales in their dtype; in place."""
    def convert(t: torch.Tensor) -> torch.Tensor:
        keep = dtype is None or not t.is_floating_point() or is_fp8(t) or t.ndim == 0
        return t.to(device=device, dtype=None if keep else dtype)

    return module._apply(convert)


def storage_bytes(module: nn.Module) -> int:
    """Bytes held by the module's parameters and buffers (fp8 weights count one byte per value)."""
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())
