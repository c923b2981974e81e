"""What the FLUX.1 and SD3 loaders share: finding the diffusion-model prefix, telling the DiT layouts apart,
reading transformer files and diffusers folders, and building a diffusers module from a state dict.

Layouts, by the keys they carry once the prefix is stripped:

==================  =================================================================
``flux-bfl``        Black Forest Labs' originals: ``double_blocks.N.img_attn.qkv.weight``, ``single_blocks.N...``
``flux-diffusers``  ``FluxTransformer2DModel``: ``single_transformer_blocks.N...``, ``x_embedder.weight``
``sd3-sai``         Stability's MMDiT: ``joint_blocks.N.context_block.attn.qkv.weight``, ``x_embedder.proj``
``sd3-diffusers``   ``SD3Transformer2DModel``: ``pos_embed.proj.weight``, ``transformer_blocks.N.attn.add_q_proj``
==================  =================================================================
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from .precision import precision_for

# ComfyUI's unet_prefix_from_state_dict looks at these; diffusers pipelines save the transformer bare
DIFFUSION_PREFIXES = ("model.diffusion_model.", "model.model.", "net.", "model.", "transformer.")

_MARKERS = {
    "flux-bfl": ("double_blocks.0.img_attn.qkv.weight", "img_in.weight", "final_layer.linear.weight"),
    "flux-diffusers": ("x_embedder.weight", "context_embedder.weight", "single_transformer_blocks.0.attn.to_q.weight"),
    "sd3-sai": ("x_embedder.proj.weight", "joint_blocks.0.context_block.attn.qkv.weight", "pos_embed"),
    "sd3-diffusers": ("pos_embed.proj.weight", "context_embedder.weight", "transformer_blocks.0.attn.add_q_proj.weight"),
}


def detect_layout(sd: dict[str, Any]) -> str | None:
    """'flux-bfl', 'flux-diffusers', 'sd3-sai' or 'sd3-diffusers' for a prefix-free state dict; None otherwise."""
    for layout, markers in _MARKERS.items():
        if all(k in sd for k in markers):
            return layout
    return None


def find_layout(sd: dict[str, Any]) -> tuple[str, str] | None:
    """(layout, prefix in front of the diffusion-model keys, '' for bare files) of a FLUX.1/SD3 file, or None."""
    layout = detect_layout(sd)
    if layout:
        return layout, ""
    for prefix in DIFFUSION_PREFIXES:
        # marker keys only: no full pass over a checkpoint that may hold a thousand keys per part
        for layout, markers in _MARKERS.items():
            if all(prefix + k in sd for k in markers):
                return layout, prefix
    return None


def strip_prefix(sd: dict[str, Any], prefix: str, *, consume: bool = False) -> dict[str, Any]:
    """The keys of `sd` that start with `prefix`, without it; `consume=True` pops them from `sd`."""
    n = len(prefix)
    if consume:
        return {k[n:]: sd.pop(k) for k in [k for k in sd if k.startswith(prefix)]}
    return {k[n:]: v for k, v in sd.items() if k.startswith(prefix)}


def split_diffusion_model(sd: dict[str, Any], *, consume: bool = False) -> tuple[str, str, dict[str, Any]] | None:
    """(layout, prefix, prefix-free diffusion-model state dict) of a FLUX.1/SD3 file or checkpoint; None if neither.

    With `consume=True` the diffusion-model keys are popped from `sd` (the rest, e.g. `vae.*`, stays), so the
    conversion that follows can free each original tensor as it goes.

    >>> layout, prefix, dm = split_diffusion_model(read_state_dict("flux1-schnell-fp8.safetensors"))
    >>> layout, prefix
    ('flux-bfl', 'model.diffusion_model.')
    """
    found = find_layout(sd)
    if found is None:
        return None
    layout, prefix = found
    return layout, prefix, strip_prefix(sd, prefix, consume=consume)


def count_blocks(sd: dict[str, Any], stem: str) -> int:
    """1 + the largest N among keys `stem.N.`, 0 when there are none."""
    pattern = re.compile(re.escape(stem) + r"\.(\d+)\.")
    found = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def describe(sd: dict[str, Any]) -> str:
    """What a state dict without FLUX.1/SD3 keys looks like, for error messages."""
    names = list(sd)
    if any(k.startswith(("input_blocks.", "model.diffusion_model.input_blocks.", "down_blocks.")) for k in names):
        return "an SD1/SD2/SDXL UNet (use load_checkpoint / CheckpointLoaderSimple)"
    if any(k.startswith(("encoder.", "decoder.", "first_stage_model.", "vae.")) for k in names):
        return "a VAE (models/vae, VAELoader)"
    if any(k.startswith(("text_model.", "encoder.block.", "shared.", "text_encoders.")) for k in names):
        return "a text encoder (models/text_encoders, CLIPLoader / DualCLIPLoader)"
    if any(".lora_" in k or "lora_unet_" in k for k in names):
        return "a LoRA (models/loras)"
    return f"not a diffusion model (keys start {', '.join(names[:3])})"


# -- reading ----------------------------------------------------------------------------------------------------
def read_transformer(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, diffusers config or {}) of a transformer file, a diffusers transformer folder or a pipeline folder."""
    from .checkpoint import read_state_dict

    path = Path(path)
    if not path.is_dir():
        return read_state_dict(path), {}
    folder = path / "transformer" if (path / "transformer").is_dir() else path
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise ModelError(f"{folder}: no .safetensors or .bin weights in this folder; pass a transformer file or a "
                         "diffusers folder with transformer/ in it")
    sd: dict[str, Any] = {}
    for f in files:
        sd.update(read_state_dict(f))
    cfg_file = folder / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    return sd, cfg


def config_from_folder(inferred: dict[str, Any], folder_cfg: dict[str, Any] | None,
                       keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Shape-inferred kwargs, overridden by a diffusers folder's config.json where it names them (only ``keys``,
    which may be ones the shapes do not tell, when given)."""
    out = dict(inferred)
    folder_cfg = folder_cfg or {}
    for key in inferred if keys is None else keys:
        if key in folder_cfg and folder_cfg[key] is not None:
            value = folder_cfg[key]
            out[key] = tuple(value) if isinstance(value, list) else value
    return out


def dequantize_scaled_fp8(sd: dict[str, Any], dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """ComfyUI's "scaled fp8" files (`scaled_fp8` marker, per-tensor `X.scale_weight`, `X.scale_input`) -> plain
    weights `X.weight * scale_weight` in `dtype`; other state dicts come back unchanged.

    This spends `dtype`-sized memory on those weights; keeping them in fp8 on the device is the job of the fp8 layer.
    """
    if "scaled_fp8" not in sd and not any(k.endswith(".scale_weight") for k in sd):
        return sd
    out = {}
    for key, value in sd.items():
        if key == "scaled_fp8" or key.endswith((".scale_weight", ".scale_input")):
            continue
        scale = sd.get(key[: -len("weight")] + "scale_weight") if key.endswith(".weight") else None
        out[key] = value if scale is None else (value.to(dtype) * scale.to(dtype))
    return out


def trace_sources(convert: Callable[[dict[str, Any]], dict[str, Any]], sd: dict[str, Any]) -> dict[str, str]:
    """{converted key: source key} of a key conversion, found by running it on tiny integer stand-ins.

    Each stand-in has the source's first dimension (what converters split and concatenate along) and holds its
    key's index, so whatever part of it lands under a new name still says where it came from. Costs a few bytes
    per row, never the weights.
    """
    names = list(sd)
    probe = {k: torch.full((sd[k].shape[0] if sd[k].ndim else 1, 1), i, dtype=torch.int32)
             for i, k in enumerate(names)}
    out = convert(probe)
    return {k: names[int(v.reshape(-1)[0])] for k, v in out.items()
            if isinstance(v, torch.Tensor) and v.numel() and not v.is_meta}


def convert_scaled(convert: Callable[[dict[str, Any]], dict[str, Any]], sd: dict[str, Any]) -> dict[str, Any]:
    """`convert(sd)` for a state dict that may be scaled fp8: the weights stay fp8 and each keeps its
    `scale_weight` / `scale_input` under its new name (the parts of a fused qkv share the fused one's scale)."""
    from .fp8 import pop_scales

    scales = pop_scales(sd)
    if not scales:
        return convert(sd)
    sources = trace_sources(convert, sd)
    out = convert(sd)
    for key, src in sources.items():
        if key.endswith(".weight") and src.endswith(".weight"):
            for leaf, value in scales.get(src[: -len(".weight")], {}).items():
                out[key[: -len("weight")] + leaf] = value
    return out


def open_source(source: str | Path | dict[str, Any], name: str | None) -> tuple[dict[str, Any], dict, str, bool]:
    """(state dict, diffusers folder config, label for messages, whether we own the dict) of a loader's source."""
    if isinstance(source, dict):
        return source, {}, name or "state dict", False
    sd, cfg = read_transformer(source)
    return sd, cfg, name or str(source), True


def place(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move a loaded diffusers module to `device` and `dtype`."""
    # nn.Module.to: diffusers' own .to() warns about fp32-kept modules these models do not have
    return nn.Module.to(module, device=device, dtype=dtype)


# -- building ---------------------------------------------------------------------------------------------------
def build_on_meta(make: Callable[[], nn.Module], sd: dict[str, Any], what: str, name: str) -> nn.Module:
    """Build with `make()` on the meta device (no random init) and assign `sd`'s tensors; mismatch -> ModelError."""
    with torch.device("meta"):
        module = make()
    try:
        result = module.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as e:  # a size mismatch: the shapes contradict each other
        first = str(e).strip().splitlines()
        raise ModelError(f"{name}: the {what} weights do not fit together ({first[-1].strip()[:200]}); "
                         "the file may be damaged or of an unsupported variant") from None
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        raise ModelError(f"{name}: the {what} weights do not fit the architecture read off their shapes "
                         f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                         f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''}); the file may be damaged")
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if left:
        raise ModelError(f"{name}: the {what} file has no weights for {left[:3]}; the file may be damaged")
    return module.eval()


def pad_to_patch(x: torch.Tensor, patch: int, mode: str = "circular") -> torch.Tensor:
    """Pad h and w up to multiples of `patch`: circular, as ComfyUI's DiTs do (its SD3.5 ControlNets reflect)."""
    pad_h, pad_w = (-x.shape[-2]) % patch, (-x.shape[-1]) % patch
    if not pad_h and not pad_w:
        return x
    return torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def spread(residuals: list[torch.Tensor], blocks: int, cycle: bool = False) -> list[torch.Tensor]:
    """ComfyUI's ControlNet residual per main-model block: each repeated ``ceil(blocks / k)`` times in a row, or
    the list cycled (``cycle``, XLabs), cut to ``blocks``."""
    if not residuals:
        return []
    rep = math.ceil(blocks / len(residuals))
    out = list(residuals) * rep if cycle else [r for r in residuals for _ in range(rep)]
    return out[:blocks]


def per_sample(value: Any, batch: int, device: torch.device, name: str) -> torch.Tensor:
    """A float32 [B] tensor from a number, a [1] or a [B] tensor."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"{name} has {t.numel()} values for a batch of {batch}; pass one value or one per sample")
    return t


def load_dit(source: str | Path | dict[str, Any], *, device: Any = None, dtype: torch.dtype | None = None,
             name: str | None = None, consume: bool = False) -> nn.Module:
    """A FLUX.1 (`FluxModel`) or SD3/SD3.5 (`SD3Model`) diffusion model, whichever the keys say: UNETLoader's job.

    >>> model = load_dit("models/diffusion_models/flux1-dev.safetensors")
    >>> model.family, model.guidance_embeds
    ('flux', True)
    """
    from .flux import FluxModel, flux_transformer_from_state_dict
    from .sd3 import SD3Model, sd3_transformer_from_state_dict

    device = torch.device(device or "cpu")
    sd, cfg, label, owned = open_source(source, name)
    found = find_layout(sd)
    if found is None:
        raise ModelError(f"{label}: no FLUX.1 or SD3 diffusion-model keys found; this looks like {describe(sd)}")
    flux = found[0].startswith("flux")
    precision = precision_for(device, dtype)
    dtype = precision.dit if flux else precision.unet
    build = flux_transformer_from_state_dict if flux else sd3_transformer_from_state_dict
    module = build(sd, name=label, folder_config=cfg, consume=owned or consume, dtype=dtype)
    return (FluxModel if flux else SD3Model)(place(module, device, dtype), name=Path(label).name)


def vae_hint_ratio(vae: Any, apply_nodes: str = "ControlNetApplyAdvanced's vae") -> int:
    """Hint pixels per latent pixel of a ControlNet whose hint is VAE-encoded: the VAE's downscale; ComfyUI's error
    when the apply node has no VAE."""
    if vae is None:
        raise ValueError("This ControlNet needs a VAE but none was provided, please use a ControlNetApply node "
                         f"with a VAE input and connect it ({apply_nodes})")
    return getattr(vae, "downscale", 8)
