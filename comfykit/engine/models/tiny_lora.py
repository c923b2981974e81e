"""Random FLUX.1 / SD3 LoRA files in the layouts people download, for tests and demos (shapes read off a model).

>>> make_flux_lora("style.safetensors", "models/diffusion_models/flux1-dev.safetensors", layout="kohya")
>>> make_flux_lora("flux1-depth-dev-lora.safetensors", transformer, layout="bfl-control")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

LAYOUTS = ("bfl", "sai", "kohya", "peft", "xlabs", "bfl-control")


def _transformer(source: Any) -> nn.Module:
    if isinstance(source, nn.Module):
        return getattr(source, "transformer", source)
    from .dit_common import load_dit

    return load_dit(source).transformer


def make_dit_lora(path: str | Path, model: Any, *, layout: str = "bfl", rank: int = 4, seed: int = 0,
                  control_channels: int = 128) -> Path:
    """Write a random LoRA for a FLUX.1 or SD3 model (a file, a Flux/SD3Model or a diffusers transformer).

    "bfl" / "sai" (the same: the model's original names): `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`
    or `diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_A.weight` (ComfyUI, ai-toolkit), "kohya":
    `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` + `.alpha`, "peft": diffusers names
    `transformer.transformer_blocks.0.attn.to_q.lora_A.weight`, "xlabs": `double_blocks.0.processor.qkv_lora1.down.weight`,
    "bfl-control": BFL's Canny/Depth control LoRA
    (bare BFL names, `img_in` taking `control_channels` inputs, `lora_B.bias` and the q/k norm scales as weights).
    """
    from .lora_dit import _sizes, original_to_diffusers_modules
    from .tiny_dit import _save

    if layout not in LAYOUTS:
        raise ValueError(f"unknown FLUX LoRA layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    transformer = _transformer(model)
    if layout in ("xlabs", "bfl-control") and not hasattr(transformer, "single_transformer_blocks"):
        raise ValueError(f"LoRA layout {layout!r} is a FLUX.1 one; this model is an SD3 MMDiT")
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def pair(name: str, out_dim: int, in_dim: int, down: str, up: str) -> None:
        sd[f"{name}.{down}.weight"] = torch.randn(rank, in_dim, generator=gen) * 0.1
        sd[f"{name}.{up}.weight"] = torch.randn(out_dim, rank, generator=gen) * 0.1

    if layout == "peft":
        for name, m in transformer.named_modules():
            if isinstance(m, nn.Linear) and (".attn." in name or ".ff" in name or "proj_mlp" in name):
                pair("transformer." + name, m.out_features, m.in_features, "lora_A", "lora_B")
        return _save(sd, path)
    if layout == "xlabs":  # the attention layers only: qkv and proj of each stream, as XLabs' processors
        _, _, inner, mlp = _sizes(transformer)
        for i in range(len(transformer.transformer_blocks)):
            for n in (1, 2):
                pair(f"double_blocks.{i}.processor.qkv_lora{n}", 3 * inner, inner, "down", "up")
                pair(f"double_blocks.{i}.processor.proj_lora{n}", inner, inner, "down", "up")
        for i in range(len(transformer.single_transformer_blocks)):
            pair(f"single_blocks.{i}.processor.qkv_lora", 3 * inner, inner, "down", "up")
            pair(f"single_blocks.{i}.processor.proj_lora", inner, inner + mlp, "down", "up")
        return _save(sd, path)
    for bfl, targets in original_to_diffusers_modules(transformer).items():
        modules = [transformer.get_submodule(t) for t, _ in targets]
        if not all(isinstance(m, nn.Linear) for m in modules):
            if layout == "bfl-control":  # RMSNorm scales, stored whole
                sd[bfl + ".scale"] = 1 + 0.1 * torch.randn(modules[0].weight.shape, generator=gen)
            continue
        out_dim, in_dim = sum(m.out_features for m in modules), modules[0].in_features
        if layout == "kohya":
            flat = "lora_unet_" + bfl.replace(".", "_")
            pair(flat, out_dim, in_dim, "lora_down", "lora_up")
            sd[flat + ".alpha"] = torch.tensor(float(rank) / 2)
        elif layout in ("bfl", "sai"):
            pair("diffusion_model." + bfl, out_dim, in_dim, "lora_A", "lora_B")
        else:
            pair(bfl, out_dim, control_channels if bfl == "img_in" else in_dim, "lora_A", "lora_B")
            sd[bfl + ".lora_B.bias"] = torch.randn(out_dim, generator=gen) * 0.01
    return _save(sd, path)


make_flux_lora = make_dit_lora  # the name the FLUX.1 tests and the template harness know
