"""LoRA: kohya (`lora_unet_...lora_down/up/alpha`) and diffusers/PEFT (`unet....lora_A/B`) files onto clones.

UNet families and text encoders here; FLUX.1 and SD3 transformers in lora_dit.py (`load_lora` hands them over).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from . import keys
from .checkpoint import read_state_dict
from .diffusion import DiffusionModel, shared_copy
from .text_encoder import TextEncoder

_TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder")
_DIT_NAMES = tuple(p + s for p in ("", "diffusion_model.", "lora_unet_", "transformer.", "lora_transformer_")
                   for s in ("double_blocks", "single_blocks", "joint_blocks", "transformer_blocks",
                             "single_transformer_blocks"))
_UNET_PREFIXES = ("lora_unet_", "unet.", "diffusion_model.", "model.diffusion_model.")


def _weighted(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d))


def unet_targets(model: DiffusionModel) -> dict[str, str]:
    """Every LoRA name for every Linear/Conv of the UNet -> our module path."""
    names = keys.unet_ldm_to_diffusers_names(model.config)
    out: dict[str, str] = {}
    for path, module in model.unet.named_modules():
        if _weighted(module):
            for name in keys.lora_target_names("unet", path, keys.unet_ldm_to_diffusers(path, names)):
                out[name] = path
    return out


def clip_targets(clip: TextEncoder) -> dict[str, tuple[str, str]]:
    """Every LoRA name for every Linear of the text encoder(s) -> (clip name, module path)."""
    out: dict[str, tuple[str, str]] = {}
    for clip_name, module_root in clip.clips.items():
        kind = "clip_l_xl" if clip_name == "clip_l" and len(clip.clips) > 1 else clip_name
        for path, module in module_root.named_modules():
            if isinstance(module, nn.Linear):
                for name in keys.lora_target_names(kind, path):
                    out[name] = (clip_name, path)
    return out


def read_lora(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """A LoRA file -> {target name: {"down", "up", "alpha"?}}; keys of other adapter kinds go under "?"."""
    sd = read_state_dict(path)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        parsed = keys.lora_base_name(key)
        if parsed is None:
            groups.setdefault("?", {})[key] = value
        else:
            groups.setdefault(parsed[0], {})[parsed[1]] = value
    return groups


def _delta(weight: torch.Tensor, parts: dict[str, torch.Tensor], strength: float, name: str) -> torch.Tensor:
    down, up = parts["down"].float(), parts["up"].float()
    rank = down.shape[0]
    scale = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
    delta = up.flatten(1) @ down.flatten(1)
    if delta.numel() != weight.numel():
        raise ModelError(f"LoRA weight {name} is {tuple(delta.shape)} but the model's is {tuple(weight.shape)}: "
                         "this LoRA was made for a different model family")
    return delta.reshape(weight.shape) * (scale * strength)


def _check_shape(weight: torch.Tensor, parts: dict[str, torch.Tensor], name: str, path: Path) -> None:
    down, up = parts["down"], parts["up"]
    if up.shape[0] != weight.shape[0] or down[0].numel() != weight[0].numel():
        raise ModelError(f"{path}: LoRA weight {name} fits a {up.shape[0]}x{down[0].numel()} layer but the model's "
                         f"is {tuple(weight.shape)}: this LoRA was made for a different model family")


def _patch(root: nn.Module, patches: dict[str, list[tuple[str, dict[str, torch.Tensor]]]], strength: float) -> nn.Module:
    """A shared copy of `root` with new tensors only for the patched weights (the original stays untouched)."""
    new_root = shared_copy(root)
    for path, entries in patches.items():
        module = new_root.get_submodule(path)
        w = module.weight
        total = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        for name, parts in entries:
            total += _delta(w, {k: v.to(w.device) for k, v in parts.items()}, strength, name)
        # the layout (channels-last or not) and requires_grad of a frozen base weight: a compiled graph's guards
        # see the clone's weights as the same kind of input, so a LoRA change does not recompile
        patched = torch.empty_like(w, requires_grad=False).copy_(w.detach().float() + total)
        module.weight = nn.Parameter(patched, requires_grad=False)
    return new_root


def load_lora(model: DiffusionModel | None, clip: TextEncoder | None, path: str | Path, strength_model: float,
              strength_clip: float) -> tuple[Any, Any]:
    """LoraLoader: clones of (model, clip) with the LoRA at the given strengths; the inputs are never changed."""
    if strength_model == 0 and strength_clip == 0:
        return model, clip
    path = Path(path)
    if model is not None and model.arch in ("flux", "sd3"):
        from .lora_dit import load_dit_lora

        new_model = load_dit_lora(model, path, strength_model)
        if clip is None or strength_clip == 0:
            return new_model, clip
        groups = read_lora(path)
        if not any(k.startswith(_TEXT_ENCODER_PREFIXES) for k in groups):
            return new_model, clip
        return new_model, _apply(None, clip, groups, path, 0.0, strength_clip)[1]
    return _apply(model, clip, read_lora(path), path, strength_model, strength_clip)


def _apply(model: DiffusionModel | None, clip: TextEncoder | None, groups: dict[str, dict[str, torch.Tensor]],
           path: Path, strength_model: float, strength_clip: float) -> tuple[Any, Any]:
    """:func:`load_lora` on a file's parsed groups (:func:`read_lora`)."""
    if not groups or set(groups) == {"?"}:
        raise ModelError(f"{path}: no LoRA keys (lora_down/lora_up, lora_A/lora_B) found; is this a LoRA file?")
    u_targets = unet_targets(model) if model is not None else {}
    c_targets = clip_targets(clip) if clip is not None else {}
    unet_patches: dict[str, list] = {}
    clip_patches: dict[str, dict[str, list]] = {}
    unmatched = []
    for name, parts in groups.items():
        if name == "?":
            unmatched += list(parts)
        elif "down" not in parts or "up" not in parts:
            unmatched.append(name)
        elif name in u_targets:
            _check_shape(model.unet.get_submodule(u_targets[name]).weight, parts, name, path)
            unet_patches.setdefault(u_targets[name], []).append((name, parts))
        elif name in c_targets:
            clip_name, module_path = c_targets[name]
            _check_shape(clip.clips[clip_name].get_submodule(module_path).weight, parts, name, path)
            clip_patches.setdefault(clip_name, {}).setdefault(module_path, []).append((name, parts))
        elif clip is None and name.startswith(_TEXT_ENCODER_PREFIXES):
            continue  # LoraLoaderModelOnly: the text-encoder half of the file is not asked for
        elif model is None and name.startswith(_UNET_PREFIXES):
            continue
        else:
            unmatched.append(name)
    if not unet_patches and not clip_patches:
        if model is not None and any(k.startswith(_DIT_NAMES) for k in unmatched):
            from .lora_dit import _foreign_family

            family = _foreign_family(model.arch, unmatched) or "FLUX.1 or SD3"
            family = family if family != "an SD/SDXL UNet" else "FLUX.1 or SD3"
            raise ModelError(f"{path}: this is a {family} LoRA (its layers are transformer blocks); load it onto "
                             f"a {family} model, not this {model.arch} one")
        raise ModelError(f"{path}: none of its {len(groups)} LoRA weights match this model "
                         f"(first: {unmatched[:2]}); it was made for a different model family")
    if unmatched:
        warnings.warn(f"LoRA {path.name}: {len(unmatched)} of {len(groups)} weights match nothing in the model "
                      f"(e.g. {unmatched[0]}); they are ignored", stacklevel=2)
    new_model, new_clip = model, clip
    if model is not None and strength_model != 0 and unet_patches:
        new_model = model.clone()
        new_model.unet = _patch(model.unet, unet_patches, strength_model)
        new_model.patches[str(path)] = strength_model
    if clip is not None and strength_clip != 0 and clip_patches:
        new_clip = clip.clone()
        for clip_name, patches in clip_patches.items():
            new_clip.clips[clip_name] = _patch(clip.clips[clip_name], patches, strength_clip)
        new_clip.patches[str(path)] = strength_clip
    return new_model, new_clip
