"""`ModelManager`: keeps loaded models between runs and decides what sits on the compute device.

The memory model: the device's free memory (``torch.cuda.mem_get_info``, or a fixed ``budget`` of bytes for tests
and for sharing a GPU) less ``reserve``, and each placed model's weight bytes. Before a node runs its models are
placed: idle models leave the device least recently used first (to host RAM, or dropped when host RAM is short and
the file can be read again), a model that still does not fit is partially loaded (``offload.stream``), and text
encoders leave after encoding when the device is short of memory. ``vram`` picks ComfyUI's policy:

=========  ======================================================================================================
"high"     models are loaded whole and stay on the device (ComfyUI ``--highvram``)
"normal"   whole when they fit after unloading idle models, else partially (the default)
"low"      weights get at most half the free memory, the rest is left to activations (``--lowvram``)
"no"       every streamable layer is streamed (``--novram``)
"cpu"      everything runs on the CPU (``--cpu``)
=========  ======================================================================================================
"""

from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from .checkpoint import load_checkpoint, load_diffusion_model, load_vae
from .offload import Streamer, host_available, model_bytes, model_modules, stream, tensor_bytes
from .precision import precision_for
from .text_encoder import TextEncoder

T = TypeVar("T")
log = logging.getLogger(__name__)

VRAM_MODES = ("high", "normal", "low", "no", "cpu")


def default_device() -> torch.device:
    """CUDA when present, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def file_key(path: str | Path) -> tuple:
    """(resolved path, size, mtime) of a file, or of every weight file of a diffusers folder."""
    path = Path(path).resolve()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".json"))
        return (str(path), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


def _file_size(path: str | Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def gb(n: float) -> str:
    """Bytes as GB with two decimals (MB below one GB), for messages."""
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


@dataclass
class Placement:
    """A model on the device: whole (``streamer`` None) or partially, and the device bytes it holds."""

    model: Any
    bytes: int
    streamer: Streamer | None = None


def _key(model: Any) -> tuple:
    return tuple(id(m) for m in model_modules(model))


class ModelManager:
    """Loaded models keyed by (path, size, mtime); the same file loads once and comes back as the same objects.

    >>> manager = ModelManager(vram="normal", budget=6 << 30)         # or the GPU's own free memory
    >>> model, clip, vae = manager.load_checkpoint("models/checkpoints/x.safetensors")
    >>> manager.call(lambda: vae.decode(latent), vae)   # makes room, places vae, retries once on out-of-memory
    """

    def __init__(self, device: Any = None, dtype: torch.dtype | None = None, max_loaded: int = 4, *,
                 vram: str = "normal", budget: int | None = None, reserve: int = 0, host_budget: int | None = None,
                 compile: bool | str | dict[str, Any] | None = None,  # noqa: A002 - Engine(compile=...)
                 channels_last: bool | None = None, text_encoder_dtype: torch.dtype | None = None,
                 vae_dtype: torch.dtype | None = None):
        from ..compile import Compiler, compile_options

        if vram not in VRAM_MODES:
            raise ValueError(f"vram={vram!r} is not a memory mode; use one of {', '.join(VRAM_MODES)}")
        self.vram = vram
        if vram == "cpu":
            device = "cpu"
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype
        self.text_encoder_dtype = text_encoder_dtype
        self.vae_dtype = vae_dtype
        #: the compute dtypes on this device (dtype and the two above override the device's defaults)
        self.precision = precision_for(self.device, dtype, text_encoder_dtype, vae_dtype)
        self.max_loaded = max_loaded
        self.budget = budget
        self.reserve = int(reserve)
        self.host_budget = host_budget
        self.events: list[tuple[str, str]] = []  # ("load" | "offload" | "drop" | "restore" | "partial", name)
        self._loaded: OrderedDict[tuple, Any] = OrderedDict()
        self._resident: OrderedDict[tuple, Placement] = OrderedDict()  # least recently used first
        self._reload: dict[tuple, tuple[Callable[[], Any], int | None]] = {}  # how to load it again: (load, part)
        self._dropped: dict[tuple, Any] = {}
        options = compile_options(compile)
        # one Compiler for every diffusion model loaded here: a reload or a LoRA clone reuses its graphs
        self.compiler = None if options is None else Compiler(options)
        self.channels_last = bool(channels_last)  # off unless asked for (docs/benchmarks.md: no CPU gain)

    @property
    def managed(self) -> bool:
        """Whether device memory is accounted for (a budget, or a CUDA device)."""
        return self.budget is not None or self.device.type == "cuda"

    # -- loading ------------------------------------------------------------------------------------------------
    def _get(self, key: tuple, load: Callable[[], T], placed: bool = False) -> T:
        """The cached value of `key`, or `load()`'s; `placed`: the loader put its weights on the device."""
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        while len(self._loaded) >= self.max_loaded:
            _, old = self._loaded.popitem(last=False)  # least recently used goes first
            for part in _parts(old):
                self._forget(part)
        value = self._with_retry(load, keep=())
        self._loaded[key] = value
        if placed and self.managed:
            # on the device from now on: counted against its memory, and unloaded like any placed model
            for part in _parts(value):
                if part is not None and model_modules(part) and not getattr(part, "keep_on_cpu", False):
                    self._resident[_key(part)] = Placement(part, model_bytes(part))
        return value

    def _target(self, *paths: str | Path) -> torch.device | None:
        """Where new weights go: the device if the files fit in its free memory now, None for the host (the model
        is placed when a node uses it)."""
        if not self.managed or self.vram == "high":
            return self.device
        if self.vram in ("low", "no") or sum(_file_size(p) for p in paths) > self.free_memory():
            return None
        return self.device

    def _prepare(self, value: Any) -> Any:
        """Attach the compiler to a loaded diffusion model; convolution weights channels-last when asked."""
        from ..compile import to_channels_last
        from .diffusion import VAE, DiffusionModel

        for part in value if isinstance(value, tuple) else (value,):
            if isinstance(part, DiffusionModel):
                part.compiled = self.compiler
                if self.channels_last:
                    to_channels_last(part.network)
            elif isinstance(part, VAE) and self.channels_last:
                to_channels_last(part.module)
        return value

    def _remember(self, value: Any, reload: Callable[[], Any]) -> Any:
        for i, part in enumerate(value if isinstance(value, tuple) else (value,)):
            if part is not None and model_modules(part):
                self._reload[_key(part)] = (reload, i if isinstance(value, tuple) else None)
        return value

    def _load_file(self, key: tuple, load: Callable[[Any], T], *paths: str | Path) -> T:
        """`load(where)` once per `key`: `where` is the device when the `paths` fit in its free memory now, else the
        host (the model is placed when a node uses it); a dropped model is read again with `load("cpu")`."""
        target = self._target(*paths)
        return self._get(key, lambda: self._prepare(self._remember(load(target or "cpu"), lambda: load("cpu"))),
                         placed=target is not None)

    def load_checkpoint(self, path: str | Path, embeddings_dir: str | Path | None = None) -> tuple:
        """(DiffusionModel, TextEncoder, VAE) of `path`, loaded once while the file is unchanged."""
        def load(where: Any) -> tuple:  # dtypes for the compute device, weights where `where` says
            return load_checkpoint(path, device=self.device, dtype=self.dtype, embeddings_dir=embeddings_dir,
                                   load_device=where, text_encoder_dtype=self.text_encoder_dtype,
                                   vae_dtype=self.vae_dtype)

        return self._load_file(("checkpoint", file_key(path), str(embeddings_dir)), load, path)

    def load_vae(self, path: str | Path) -> Any:
        """A standalone VAE, loaded once while the file is unchanged."""
        return self._load_file(("vae", file_key(path)),
                               lambda where: load_vae(path, device=where, dtype=self.precision.vae), path)

    def load_diffusion_model(self, path: str | Path, weight_dtype: str = "default") -> Any:
        """A diffusion model file on its own (UNETLoader), loaded once per file and weight_dtype."""
        def load(where: Any) -> Any:
            return load_diffusion_model(path, device=self.device, dtype=self.dtype, weight_dtype=weight_dtype,
                                        load_device=where)

        return self._load_file(("diffusion_model", file_key(path), weight_dtype), load, path)

    def load_text_encoders(self, paths: list[str | Path], type: str, *, cpu: bool = False,  # noqa: A002
                           embeddings_dir: str | Path | None = None) -> Any:
        """CLIPLoader / DualCLIPLoader / TripleCLIPLoader: one text encoder from 1-3 files, loaded once."""
        from .text_encoder_files import load_text_encoders

        device = torch.device("cpu") if cpu else self.device

        def load(where: Any) -> Any:  # dtypes for the device they run on
            encoder = load_text_encoders(paths, type, device=device, dtype=self.text_encoder_dtype,
                                         embeddings_dir=embeddings_dir, load_device="cpu" if cpu else where)
            encoder.keep_on_cpu = cpu  # ComfyUI's device="cpu": encode there, never move it to the GPU
            return encoder

        key = ("text_encoders", tuple(file_key(p) for p in paths), type, str(device), str(embeddings_dir))
        return self._load_file(key, load, *paths)

    def load_controlnet(self, path: str | Path, model: Any = None) -> Any:
        """A CONTROL_NET file (ControlNetLoader; ``model`` for DiffControlNetLoader), loaded once while unchanged;
        the sampler nodes place it with the diffusion model (``controlnet.control_models``)."""
        from .controlnet import load_controlnet

        def load(where: Any) -> Any:
            return load_controlnet(path, device=self.device, dtype=self.dtype, model=model, load_device=where)

        return self._load_file(("controlnet", file_key(path), None if model is None else id(model.network)), load,
                               path)

    def load_upscale_model(self, path: str | Path) -> Any:
        """An UpscaleModelLoader model (ESRGAN family built in, others through spandrel), loaded once."""
        from .upscale import load_upscale_model

        return self._get(("upscale_model", file_key(path)), lambda: load_upscale_model(path))

    def loaded(self) -> list[tuple]:
        """Keys of what is loaded now, least recently used first."""
        return list(self._loaded)

    # -- the memory model ---------------------------------------------------------------------------------------
    def free_memory(self) -> float:
        """Bytes the device can still take for weights (less ``reserve``); infinite on an unmanaged CPU."""
        if self.budget is not None:
            # weights shared by a LoRA clone and its original are on the device once
            whole = [t for pl in self._resident.values() if pl.streamer is None for t in _tensors(pl.model)]
            used = tensor_bytes(whole) + sum(pl.bytes for pl in self._resident.values() if pl.streamer is not None)
            return self.budget - self.reserve - used
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            free, total = torch.cuda.mem_get_info(index)
            allocated = torch.cuda.memory_allocated(index)
            # what torch's caching allocator holds but does not use is free for us too
            free += torch.cuda.memory_reserved(index) - allocated
            # torch.cuda.set_per_process_memory_fraction (a GPU shared, a T4 simulated) caps this process
            fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda _: 1.0)(index)  # older torch
            free = min(free, total * fraction - allocated)
            return free - self.reserve
        return math.inf

    def host_free(self) -> float:
        """Host RAM available for models leaving the device."""
        return self.host_budget if self.host_budget is not None else host_available()

    def resident(self) -> list[str]:
        """Names of the models on the device, least recently used first (partial ones marked)."""
        return [f"{_name(p.model)}{' (partial)' if p.streamer else ''}" for p in self._resident.values()]

    def _compute_dtype(self, model: Any) -> torch.dtype | None:
        family = getattr(model, "family", None)
        if family is not None and hasattr(family, "compute_dtype"):  # FLUX.1 runs in bf16 where fp16 overflows
            return family.compute_dtype(self.precision)
        if isinstance(model, TextEncoder):  # the FLUX.1/SD3 encoders are TextEncoder subclasses
            return self.precision.text_encoder
        return {"DiffusionModel": self.precision.unet, "VAE": self.precision.vae}.get(type(model).__name__)

    def use(self, *models: Any, partial: bool = False) -> None:
        """Put `models` on the compute device, making room first; those that cannot fit are loaded partially."""
        models = tuple(m for m in models if m is not None and model_modules(m))
        for m in models:
            self._restore_if_dropped(m)
        for m in models:
            if getattr(m, "keep_on_cpu", False):
                continue
            key = _key(m)
            if key in self._resident and not (partial and self._resident[key].streamer is None):
                self._resident.move_to_end(key)
                continue
            if key in self._resident:
                self._offload(key)
            dtype = self._compute_dtype(m)
            if not self.managed:
                if m.device != self.device and not (m.device.type == self.device.type == "cuda"):
                    self._with_retry(lambda m=m, dtype=dtype: m.to(self.device, dtype), keep=models)
                continue
            self._place(m, key, dtype, models, partial)

    def _place(self, m: Any, key: tuple, dtype: torch.dtype | None, keep: tuple, partial: bool) -> None:
        size = model_bytes(m, dtype)
        # a LoRA clone shares its original's unpatched weights: those already on the device need no room
        there = _ids([pl.model for pl in self._resident.values() if pl.streamer is None])
        new = size - tensor_bytes([p for p in _params(m) if id(p) in there], dtype)
        limit = self._weight_limit(partial, size)
        if new > limit:
            self._make_room(new - limit, keep)
            limit = self._weight_limit(partial, size)
        if self.vram == "high" or (new <= limit and self.vram != "no"):
            self._with_retry(lambda: m.to(self.device, dtype), keep=keep)
            self._resident[key] = Placement(m, size)
            return
        streamer = stream(model_modules(m), self.device, max(0, int(limit)) if self.vram != "no" else 0, dtype)
        self._resident[key] = Placement(m, streamer.resident_bytes, streamer)
        self.events.append(("partial", _name(m)))
        log.info("%s: %s of %s on %s, %d layers streamed", _name(m), gb(streamer.resident_bytes), gb(size),
                 self.device, streamer.streamed_layers)

    def _weight_limit(self, partial: bool, size: int) -> float:
        """Device bytes a model's weights may take: what is free ("low": half of it, for activations); on the
        retry after an out-of-memory, at most half the model, so the run gets that much more room."""
        free = self.free_memory()
        if partial:
            return min(free / 2, size / 2)
        return free / 2 if self.vram == "low" else free

    def _kept(self, keep: tuple) -> set[tuple]:
        """Keys of `keep` and of the resident models sharing weights with them (a LoRA clone's original): moving
        one of those would move the kept model's weights too."""
        keep = tuple(m for m in keep if m is not None)
        return set(_sharing(keep, {k: pl.model for k, pl in self._resident.items()})) | {_key(m) for m in keep}

    def _make_room(self, need: float, keep: tuple) -> None:
        """Unload idle models, least recently used first, until `need` bytes are free (or nothing is left)."""
        kept = self._kept(keep)
        for key in list(self._resident):
            if need <= 0:
                break
            if key in self._resident and key not in kept:
                need -= self._offload(key)

    def _offload(self, key: tuple) -> int:
        """Take one model off the device: to host RAM, or dropped (re-read from its file later) when RAM is short.
        Models sharing weights with it (a LoRA clone and its original) leave the device with it."""
        sharing = _sharing((self._resident[key].model,), {k: pl.model for k, pl in self._resident.items() if k != key})
        freed = self._offload_one(key)
        for other in sharing:
            freed += self._offload_one(other, drop=False)
        return freed

    def _offload_one(self, key: tuple, drop: bool = True) -> int:
        placement = self._resident.pop(key)
        m = placement.model
        if placement.streamer is not None:
            placement.streamer.release()
        if drop and self.host_free() < placement.bytes and key in self._reload:
            for module in model_modules(m):
                for t in (*module.parameters(), *module.buffers()):
                    # an empty host tensor in place of the weights (set_data cannot go back from "meta");
                    # they come back from the file when the model is used again
                    t.data = torch.empty(0, dtype=t.dtype)
            self._dropped[key] = m
            self.events.append(("drop", _name(m)))
        else:
            if placement.streamer is None:
                m.to("cpu")
            self.events.append(("offload", _name(m)))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return placement.bytes

    def _restore_if_dropped(self, m: Any) -> None:
        if not self._dropped or not any(p.numel() == 0 for module in model_modules(m) for p in module.parameters()):
            return
        # `m`, or a dropped model it shares weights with (a LoRA clone's original), is read again onto the host;
        # placing it on the device is use()'s job, with room made first
        loaded: dict[int, Any] = {}  # a checkpoint whose UNet, CLIP and VAE were all dropped is read once
        for key in _sharing((m,), self._dropped):
            dropped = self._dropped[key]
            reload, part = self._reload[key]
            if id(reload) not in loaded:
                loaded[id(reload)] = reload()
            fresh = self._prepare(loaded[id(reload)] if part is None else loaded[id(reload)][part])  # as it was
            for old, new in zip(model_modules(dropped), model_modules(fresh)):
                new_state = new.state_dict(keep_vars=True)
                for name, t in (*old.named_parameters(), *old.named_buffers()):
                    t.data = new_state[name].data
            del self._dropped[key]
            self.events.append(("restore", _name(dropped)))

    def _forget(self, model: Any) -> None:
        if model is None or not model_modules(model):
            return
        key = _key(model)
        placement = self._resident.pop(key, None)
        if placement is not None and placement.streamer is not None:
            placement.streamer.release()
        self._reload.pop(key, None)
        self._dropped.pop(key, None)

    def models(self) -> list[Any]:
        """Every loaded model (diffusion models, text encoders, VAEs, ControlNet networks, ...), least recently
        loaded first."""
        return [m for value in self._loaded.values() for m in _parts(value) if m is not None]

    def offload(self, keep: tuple = ()) -> None:
        """Move every model but `keep` (and those sharing their weights) off the device; release cached GPU memory."""
        keep_keys = self._kept(keep)
        for key in [k for k in self._resident if k not in keep_keys]:
            if key in self._resident:  # not already gone with a model it shares weights with
                self._offload(key)
        if self.device.type != "cpu" and not self.managed:
            for m in self.models():
                if _key(m) not in keep_keys and m.device.type != "cpu":
                    m.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _memory_short(self) -> bool:
        """Whether a loaded model that is not on the device would not fit in what is free now."""
        waiting = [m for m in self.models() if _key(m) not in self._resident and not isinstance(m, TextEncoder)]
        need = max((model_bytes(m, self._compute_dtype(m)) for m in waiting), default=0)
        return need > self.free_memory()

    # -- running ------------------------------------------------------------------------------------------------
    def call(self, fn: Callable[[], T], *models: Any) -> T:
        """Run `fn` with `models` on the device. On out-of-memory: unload everything else and retry, with `models`
        whole when what failed to allocate now fits twice over, then (or else) partially loaded with half the free
        memory; a failure after that says what was needed and what to try."""
        self.use(*models)
        try:
            out = fn()
        except torch.OutOfMemoryError as first:
            self.offload(keep=models)
            asked = _asked(first)
            # whole models run faster than streamed ones: try them first when unloading the others may be enough
            whole_first = asked is not None and 2 * asked[1] <= self.free_memory()
            tries = ([False] if whole_first else []) + ([True] if self.managed else []) or [False]
            log.warning("out of memory (%s): unloaded idle models, retrying%s", str(first).splitlines()[0][:120],
                        "" if tries[0] is False else " with partial loading")
            for i, partial in enumerate(tries):
                try:
                    self.use(*models, partial=partial)
                    out = fn()
                    break
                except torch.OutOfMemoryError as again:
                    if i == len(tries) - 1:
                        raise torch.OutOfMemoryError(self.explain_oom(again, models)) from None
                    log.warning("out of memory again (%s): retrying with partial loading",
                                str(again).splitlines()[0][:120])
        if self.managed and self.vram != "high":
            for m in models:
                if isinstance(m, TextEncoder) and _key(m) in self._resident and self._memory_short():
                    self._offload(_key(m))  # the diffusion model needs the room more than the encoder
        return out

    def explain_oom(self, error: BaseException, models: tuple) -> str:
        """An out-of-memory message: what was needed, what was free, which vram mode or size to try."""
        asked = _asked(error)
        weights = sum(model_bytes(m, self._compute_dtype(m)) for m in models if m is not None)
        free = self.free_memory()
        free_text = "unlimited" if free == math.inf else gb(max(free, 0))
        nxt = {"high": "'normal'", "normal": "'low'", "low": "'no'", "no": "'cpu'"}.get(self.vram)
        advice = (f"try Engine(vram={nxt}) (partial loading), a smaller resolution or batch size"
                  if nxt else "try a smaller resolution or batch size")
        what = ", ".join(_name(m) for m in models if m is not None) or "the node"
        return (f"out of memory on {self.device} running {what}: it needed "
                f"{asked[0] + ' more for activations, ' if asked else ''}{gb(weights)} of weights; "
                f"{free_text} free after unloading every other model and retrying (vram={self.vram!r}); {advice}")

    def _with_retry(self, fn: Callable[[], T], keep: tuple) -> T:
        try:
            return fn()
        except torch.OutOfMemoryError:
            self.offload(keep=keep)
            return fn()

    def unload_all(self) -> None:
        """Forget every loaded model (engine.free()) and release cached GPU memory."""
        for placement in self._resident.values():
            if placement.streamer is not None:
                placement.streamer.release()
        self._resident.clear()
        self._loaded.clear()
        self._reload.clear()
        self._dropped.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30,
          "TiB": 2**40}


def _asked(error: BaseException) -> tuple[str, int] | None:
    """What an out-of-memory error says it tried to allocate: ("2.00 GiB", bytes), or None."""
    found = re.search(r"[Tt]ried to allocate ([\d.]+) ([KMGT]?i?B)", str(error))
    if not found or found.group(2) not in _UNITS:
        return None
    return f"{found.group(1)} {found.group(2)}", int(float(found.group(1)) * _UNITS[found.group(2)])


def _params(model: Any) -> list[torch.Tensor]:
    return [p for m in model_modules(model) for p in m.parameters()]


def _ids(models: Any) -> set[int]:
    return {id(p) for m in models for p in _params(m)}


def _sharing(models: tuple, candidates: dict[tuple, Any]) -> list[tuple]:
    """Keys of the `candidates` holding a weight of one of `models` (the same Parameter object: a LoRA clone and
    its original), in the candidates' order."""
    ids = _ids(models)
    return [k for k, m in candidates.items() if any(id(p) in ids for p in _params(m))]


def _tensors(model: Any) -> list[torch.Tensor]:
    return [t for m in model_modules(model) for t in (*m.parameters(), *m.buffers())]


def _parts(value: Any) -> list[Any]:
    """The models a loader's value holds: a checkpoint's three, a CONTROL_NET's network, or the value itself."""
    parts = list(value) if isinstance(value, tuple) else [value]
    return [p.model if hasattr(p, "chain") and hasattr(p, "model") else p for p in parts]


def _name(model: Any) -> str:
    return f"{type(model).__name__}({getattr(model, 'name', '') or '?'})"
