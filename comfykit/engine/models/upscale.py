"""Upscale models (ComfyUI's UPSCALE_MODEL): loading ESRGAN-family files and tiled upscaling with bounded memory.

Which loader, and why:

- ESRGAN / Real-ESRGAN / BSRGAN / 4x-UltraSharp-style RRDBNets, by far the files people download, load with the
  built-in RRDBNet (:mod:`.rrdb`) from any of their key layouts, everywhere. It is the same network spandrel builds
  and is called the way spandrel's descriptor calls it (input padded to spandrel's size rules, each tile's output
  clamped to 0..1), so results do not depend on whether spandrel happens to import, and it is what CI tests.
- Every other architecture (SwinIR, HAT, DAT, SRVGGNet, ESRGAN+, ...) goes to spandrel (MIT), the library ComfyUI
  uses, when it imports, with spandrel_extra_arches' non-commercial architectures added where that is installed
  (as ComfyUI does). spandrel imports torchvision at import time, and where torchvision's wheels do not match the
  installed torch (CPU torch with the CUDA-only torchvision wheels of some indexes) it cannot import; then those
  files raise a ModelError that says what the file looks like and that spandrel is needed.

``upscale_image`` tiles the image as ComfyUI does (512 px tiles, 32 px overlap, feathered blending, a tile half
as big after an out-of-memory error, 128 px at least) and, on the CPU where running out of memory means
swapping rather than an exception, starts from the largest tile whose estimated working memory fits a budget.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from . import rrdb
from .family import module_device, module_dtype

#: ComfyUI's ImageUpscaleWithModel tile and overlap (input pixels); a tile is halved down to MIN_TILE on OOM
TILE, OVERLAP, MIN_TILE = 512, 32, 128
#: working memory one upscale may use on the CPU, where a too-big tile swaps instead of raising (bytes)
CPU_BUDGET = 1 << 30


class UpscaleModel:
    """UPSCALE_MODEL: an image network with a fixed integer scale; ``model(x)`` maps [B, C, H, W] 0..1 images to
    [B, C', H*scale, W*scale].

    >>> model = load_upscale_model("models/upscale_models/RealESRGAN_x4plus.safetensors")   # doctest: +SKIP
    >>> upscale_image(model, image).shape                      # [B, H, W, 3] -> [B, 4H, 4W, 3]  # doctest: +SKIP
    """

    def __init__(self, network: nn.Module, scale: int, architecture: str, *, in_channels: int = 3,
                 out_channels: int = 3, name: str = "", call: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 features: int = 64, minimum: int = 0, multiple_of: int = 1):
        self.network = network.eval()
        self.scale = int(scale)
        self.architecture = architecture
        self.in_channels, self.out_channels = in_channels, out_channels
        self.name = name
        self.features = features  # width of the full-resolution feature maps, for the memory estimate
        self._call = call  # spandrel descriptors pad inputs to their size rules: call those instead
        # without a descriptor: the size rules spandrel's would have (see _pad)
        self.minimum, self.multiple_of = minimum, multiple_of

    def __repr__(self) -> str:
        return f"UpscaleModel({self.architecture}, {self.scale}x, {self.name!r})"

    @property
    def device(self) -> torch.device:
        """Where the weights are now."""
        return module_device(self.network)

    @property
    def dtype(self) -> torch.dtype:
        """The weight dtype."""
        return module_dtype(self.network)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> UpscaleModel:
        """Move the weights (in place) and return self, like ``nn.Module.to``."""
        self.network.to(device=device, dtype=dtype)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        with torch.inference_mode():
            if self._call is not None:
                return self._call(x)
            # what spandrel's ImageModelDescriptor does around the network, so both loaders agree on every tile
            h, w = x.shape[-2:]
            out = self.network(_pad(x, self.minimum, self.multiple_of)).clamp_(0.0, 1.0)
            return out[..., :h * self.scale, :w * self.scale]

    def estimate_memory(self, tile: int) -> int:
        """Bytes one ``tile`` x ``tile`` call needs beyond the weights (measured on RRDBNet: the two widest
        full-resolution feature maps alive at once, plus the low-resolution trunk)."""
        size = torch.tensor([], dtype=self.dtype).element_size()
        high = 2 * self.features * (tile * self.scale) ** 2
        low = 8 * self.features * tile ** 2
        return (high + low) * size


# -- loading ---------------------------------------------------------------------------------------------------
def read_upscale_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an upscale model file, unwrapped from ``params_ema`` / ``params`` / ``state_dict`` and with
    DataParallel's ``module.`` prefix removed (the forms ESRGAN-family ``.pth`` files come in)."""
    from .checkpoint import read_state_dict

    path = Path(path)
    if path.suffix in (".safetensors", ".sft") or not path.is_file():
        sd: Any = read_state_dict(path)
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ModelError(f"{path}: cannot read it as a torch file ({first}); if it is a pickled whole model "
                             "convert it to a .safetensors state dict, else re-download it") from None
    for key in ("params_ema", "params", "state_dict", "model_state_dict"):  # Real-ESRGAN: params_ema first
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise ModelError(f"{path}: holds a {type(sd).__name__}, not a state dict of tensors")
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_upscale_model(path: str | Path, device: Any = "cpu") -> UpscaleModel:
    """An UpscaleModel from a file: built-in RRDBNet for ESRGAN-family files, spandrel for the rest."""
    path = Path(path)
    sd = read_upscale_state_dict(path)
    kind = rrdb.layout(sd)
    if kind is not None and not any(".conv1x1." in k for k in sd):  # ESRGAN+ (1x1 convs): spandrel's
        return _load_rrdb(path, sd, kind).to(device)
    return _load_spandrel(path, sd).to(device)


def _load_rrdb(path: Path, sd: dict[str, torch.Tensor], kind: str) -> UpscaleModel:
    try:
        sd = rrdb.convert(sd)
        config = rrdb.infer_config(sd)
    except (KeyError, ValueError, IndexError) as e:
        raise ModelError(f"{path}: an ESRGAN ({kind} key layout) file with parts missing or out of shape ({e}); "
                         "re-download it") from None
    if config.scale < 1 or 2 ** config.upsamples % config.unshuffle:
        raise ModelError(f"{path}: an ESRGAN file whose scale cannot be read ({config}); re-download it")
    with torch.device("meta"):
        network = rrdb.RRDBNet(config)
    try:
        network.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise ModelError(f"{path}: an ESRGAN ({kind} key layout) file whose weights do not fit the RRDBNet read "
                         f"off its shapes ({config.features} features, {config.blocks} blocks, {config.scale}x): "
                         f"{detail}") from None
    arch = "RealESRGAN" if config.unshuffle > 1 else "ESRGAN"
    # spandrel's ESRGAN size rules: 2 px at least, a multiple of 4 when the input is pixel-unshuffled
    return UpscaleModel(network, config.scale, arch, in_channels=config.in_channels,
                        out_channels=config.out_channels, name=path.name, features=config.features, minimum=2,
                        multiple_of=4 if config.unshuffle > 1 else 1)


def _spandrel_registry(spandrel: Any) -> tuple[Any, bool]:
    """spandrel's architectures plus spandrel_extra_arches' where it is installed (a copy: spandrel's global
    registry is left as it is), and whether the extras are in."""
    registry = spandrel.MAIN_REGISTRY.copy()
    try:
        from spandrel_extra_arches import EXTRA_REGISTRY
    except Exception:  # not installed, or broken against this spandrel: the main architectures still load
        return registry, False
    registry.add(*EXTRA_REGISTRY, ignore_duplicates=True)
    return registry, True


def _load_spandrel(path: Path, sd: dict[str, torch.Tensor]) -> UpscaleModel:
    try:
        import spandrel
    except Exception as e:  # ImportError, or torchvision's operators failing to load (RuntimeError)
        reason = f"spandrel cannot be imported here ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        raise _unknown(path, sd, reason) from None
    registry, extras = _spandrel_registry(spandrel)
    sd = spandrel.canonicalize_state_dict(sd)
    # detect, then load, as spandrel's registry does, to name the architecture when its loading fails
    arch = next((a.architecture for a in registry.architectures("detection") if a.detect(sd)), None)
    if arch is None:
        reason = f"spandrel does not know this architecture either (spandrel {spandrel.__version__}, " + (
            "with spandrel_extra_arches)" if extras else "without spandrel_extra_arches, which adds SRFormer, "
            "CodeFormer, DDColor, Restormer and others under non-commercial licences: if it is one of those, "
            "pip install spandrel_extra_arches)")
        raise _unknown(path, sd, reason, hint=False) from None
    try:
        descriptor = arch.load(sd)
    except Exception as e:  # a detected architecture whose tensors are missing or out of shape
        detail = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise ModelError(f"{path}: spandrel {spandrel.__version__} reads it as a {arch.name} model but cannot "
                         f"load it ({detail}); it looks like {_looks_like(sd)}. The file may be cut short or a "
                         "variant this spandrel does not support: re-download it or upgrade spandrel") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ModelError(f"{path}: a {arch.name} model ({descriptor.purpose}), which is not a single-image model; "
                         "an upscale model must map one image to one image")
    return UpscaleModel(descriptor.model, descriptor.scale, arch.name, in_channels=descriptor.input_channels,
                        out_channels=descriptor.output_channels, name=path.name, call=descriptor)


def _looks_like(sd: dict[str, Any]) -> str:
    """A guess at what a state dict is, from its key names (for error messages)."""
    keys = list(sd)
    has = lambda *parts: any(any(p in k for p in parts) for k in keys)  # noqa: E731
    if has(".conv1x1."):
        return "an ESRGAN+ RRDBNet (1x1 convs in its dense blocks)"
    if has("residual_group.blocks"):
        return "a SwinIR/HAT-style transformer upscaler"
    if has("model.diffusion_model.", "input_blocks.0.0.weight", "double_blocks.0."):
        return "a diffusion model (put it in models/checkpoints or models/diffusion_models)"
    if has("lora_down", "lora_A", "lora_unet_"):
        return "a LoRA (put it in models/loras)"
    if has("decoder.conv_in", "first_stage_model."):
        return "a VAE (put it in models/vae)"
    if has("control_model.", "controlnet_"):
        return "a ControlNet (put it in models/controlnet)"
    if "body.0.weight" in sd and "body.1.weight" in sd and sd["body.1.weight"].ndim == 1:
        return "an SRVGGNetCompact (Real-ESRGAN general / anime video) upscaler"
    return f"{len(keys)} tensors whose keys start {', '.join(keys[:3]) or '(none)'}"


def _unknown(path: Path, sd: dict[str, Any], reason: str = "", hint: bool = True) -> ModelError:
    what = _looks_like(sd)
    why = f"; {reason}" if reason else ""
    advice = (". Other architectures load through spandrel: install spandrel with a torchvision that matches your "
              "torch") if hint else "; check that the file is an image upscaler"
    return ModelError(f"{path}: not an upscale model the built-in loader reads (ESRGAN / Real-ESRGAN / BSRGAN "
                      f"RRDBNets: model.N, conv_first/body.N or RRDB_trunk.N layout): it looks like {what}{why}{advice}")


# -- tiled upscaling -------------------------------------------------------------------------------------------
def _pad(x: torch.Tensor, minimum: int, multiple_of: int) -> torch.Tensor:
    """[B, C, H, W] padded on the bottom and right to ``minimum`` px and a multiple of ``multiple_of``, as
    spandrel pads before a call: reflect as far as it can (size - 1), then replicate."""
    h, w = x.shape[-2:]
    pad_h = -max(h, minimum) % multiple_of + max(h, minimum) - h
    pad_w = -max(w, minimum) % multiple_of + max(w, minimum) - w
    if not (pad_h or pad_w):
        return x
    reflect_h, reflect_w = min(pad_h, h - 1), min(pad_w, w - 1)
    x = torch.nn.functional.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect")
    return torch.nn.functional.pad(x, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side begin (ComfyUI's positions: every tile - overlap, the last one clamped)."""
    if size <= tile:
        return [0]
    return [max(0, min(size - overlap, start)) for start in range(0, size - overlap, tile - overlap)]


def tile_steps(width: int, height: int, tile: int, overlap: int) -> int:
    """Model calls one image of this size takes."""
    return len(_starts(height, tile, overlap)) * len(_starts(width, tile, overlap))


def tiled_scale(samples: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor], tile: int, overlap: int,
                scale: int, out_channels: int, progress: Callable[[], None] | None = None) -> torch.Tensor:
    """``function`` over overlapping tiles of [B, C, H, W] ``samples``, blended with linear feathers of
    ``overlap * scale`` output pixels (ComfyUI's ``tiled_scale``); the result is on the CPU, float32."""
    b, _, h, w = samples.shape
    output = torch.empty((b, out_channels, h * scale, w * scale))
    for i in range(b):
        s = samples[i:i + 1]
        if h <= tile and w <= tile:  # the whole image is one tile
            output[i:i + 1] = function(s).float().cpu()
            if progress is not None:
                progress()
            continue
        out = torch.zeros((1, out_channels, h * scale, w * scale))
        weight = torch.zeros((1, 1, h * scale, w * scale))  # one channel: the blend is the same for all of them
        for y, x in itertools.product(_starts(h, tile, overlap), _starts(w, tile, overlap)):
            piece = function(s[:, :, y:y + tile, x:x + tile]).float().cpu()
            ph, pw = piece.shape[2:]
            mask = _feather(ph, overlap * scale)[:, None] * _feather(pw, overlap * scale)[None, :]
            out[:, :, y * scale:y * scale + ph, x * scale:x * scale + pw] += piece * mask
            weight[:, :, y * scale:y * scale + ph, x * scale:x * scale + pw] += mask
            if progress is not None:
                progress()
        output[i:i + 1] = out / weight
    return output


def _feather(size: int, feather: int) -> torch.Tensor:
    """Blend weights along one side of a tile: a linear ramp (1/feather .. 1) in from both edges."""
    ramp = torch.ones(size)
    if feather < size:
        for t in range(feather):  # both ends multiply, as ComfyUI's, where a short tile's ramps meet
            ramp[t] *= (t + 1) / feather
            ramp[size - 1 - t] *= (t + 1) / feather
    return ramp


def pick_tile(model: UpscaleModel, height: int, width: int, tile: int = TILE, budget: int | None = None) -> int:
    """The tile ComfyUI starts from (512), halved while its estimated working memory exceeds ``budget``
    (default: CPU_BUDGET on the CPU, no limit on a GPU, where an out-of-memory error halves it instead)."""
    if budget is None:
        budget = CPU_BUDGET if model.device.type == "cpu" else None
    tile = min(tile, max(height, width, MIN_TILE))
    while budget is not None and tile > MIN_TILE and model.estimate_memory(tile) > budget:
        tile //= 2
    return tile


def upscale_image(model: UpscaleModel, image: torch.Tensor, *, tile: int | None = None, overlap: int = OVERLAP,
                  budget: int | None = None, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """ImageUpscaleWithModel: [B, H, W, C] images 0..1 -> [B, H*s, W*s, C'] clamped to 0..1, tiled (``tile``
    None: ``pick_tile``), the tile halved after each out-of-memory error down to 128 px."""
    samples = image.movedim(-1, -3)[:, :model.in_channels]
    h, w = samples.shape[-2:]
    tile = pick_tile(model, h, w, budget=budget) if tile is None else tile
    while True:
        total = samples.shape[0] * tile_steps(w, h, tile, overlap)
        counter = itertools.count(1)
        step = None if progress is None else (lambda total=total, counter=counter: progress(next(counter), total))
        try:
            out = tiled_scale(samples, model, tile, overlap, model.scale, model.out_channels, step)
            break
        except torch.OutOfMemoryError:
            if tile // 2 < MIN_TILE:
                raise
            tile //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return torch.clamp(out.movedim(-3, -1), 0.0, 1.0)
