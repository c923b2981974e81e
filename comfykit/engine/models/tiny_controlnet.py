"""Tiny random-weight ControlNets in the layouts users download, for tests and ``ck.demo`` (no hub access).

>>> make_controlnet("models/controlnet/tiny_sd15.pth", arch="sd1", layout="ldm")
>>> make_controlnet("models/controlnet/tiny_sd15_diffusers", arch="sd1", layout="diffusers-folder")
>>> make_controlnet("models/controlnet/tiny_flux_canny.safetensors", arch="flux-xlabs", layout="xlabs")

Each fits the demo checkpoint of the same arch (``comfykit.demo.make_checkpoint``): same channels, levels and text
width. Every weight is random, the zero-initialised output convolutions too, so the residuals are never zero.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from . import keys

LAYOUTS = ("ldm", "ldm-pth", "diffusers", "diffusers-folder", "xlabs")
#: FLUX.1 ControlNet arch names: InstantX-style (latent hint), Shakker-Labs' Union-Pro (10 modes), XLabs (pixel hint)
FLUX_ARCHS = ("flux-instantx", "flux-union", "flux-xlabs")
#: the hint encoder's widths: four levels (8x down to the latent) as every real ControlNet, tiny
HINT_CHANNELS = (8, 16, 16, 32)


def controlnet_kwargs(arch: str = "sd1") -> dict[str, Any]:
    """``ControlNetModel`` kwargs matching the demo UNet of ``arch`` ("sd1", "sd2", "sdxl")."""
    from ...demo import _configs
    from .diffusers_export import diffusers_unet_config

    unet = diffusers_unet_config(_configs(arch)[0])
    for key in ("out_channels", "up_block_types", "sample_size"):
        unet.pop(key)
    unet["layers_per_block"] = unet["layers_per_block"][0]  # ControlNetModel takes one count for every level
    unet["conditioning_embedding_out_channels"] = HINT_CHANNELS
    return unet


def tiny_controlnet(arch: str = "sd1", seed: int = 0) -> torch.nn.Module:
    """A diffusers ``ControlNetModel`` for the demo UNet of ``arch``, every weight random (deterministic per seed)."""
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ControlNetModel(**controlnet_kwargs(arch)).eval()
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")):
                    p.copy_(torch.randn_like(p) * 0.1)  # diffusers starts these at zero
                elif "norm" in name:
                    p.add_(torch.randn_like(p) * 0.02)
    return net


def tiny_sd3_controlnet(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A random diffusers ``SD3ControlNetModel`` fitting ``tiny_dit.tiny_sd3`` (one block unless overridden)."""
    from diffusers import SD3ControlNetModel

    from .tiny_dit import TINY_SD3, randomize

    # q/k norms as SD3.5's: their size tells the head width, which the shapes otherwise leave open
    return randomize(SD3ControlNetModel(**{**TINY_SD3, "num_layers": 1, "qk_norm": "rms_norm", **overrides}), seed)


def tiny_flux_controlnet(arch: str = "flux-instantx", seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A random diffusers ``FluxControlNetModel`` fitting the demo FLUX.1 (``demo.make_dit_checkpoint("flux")``):
    2 double blocks and 1 single block (InstantX, Union-Pro with 10 modes), or 2 double blocks and a hint encoder
    (XLabs); guidance-distilled, as the released ones (trained on dev)."""
    from diffusers import FluxControlNetModel

    from .tiny_dit import TINY_FLUX, randomize

    if arch not in FLUX_ARCHS:
        raise ValueError(f"unknown FLUX.1 ControlNet arch {arch!r}; choose one of {', '.join(FLUX_ARCHS)}")
    cfg = {**TINY_FLUX, "joint_attention_dim": 32, "pooled_projection_dim": 32, "guidance_embeds": True,
           "num_layers": 2, "num_single_layers": 1}
    if arch == "flux-union":
        cfg["num_mode"] = 10
    elif arch == "flux-xlabs":
        cfg.update(num_single_layers=0, conditioning_embedding_channels=16, patch_size=2)
    return randomize(FluxControlNetModel(**{**cfg, **overrides}), seed)


def flux_controlnet_to_xlabs(sd: dict[str, Any]) -> dict[str, Any]:
    """A diffusers ``FluxControlNetModel`` (with a hint encoder) state dict in XLabs' own key names."""
    from .controlnet_flux import _XLABS_HINT
    from .tiny_dit import flux_diffusers_to_bfl

    inner = sd["x_embedder.weight"].shape[0]
    trunk = {k: v for k, v in sd.items() if not k.startswith(("controlnet_", "input_hint_block."))}
    stand_in = {"proj_out.weight": torch.zeros(1, inner), "proj_out.bias": torch.zeros(1),
                "norm_out.linear.weight": torch.zeros(2 * inner, inner), "norm_out.linear.bias": torch.zeros(2 * inner)}
    out = {k: v for k, v in flux_diffusers_to_bfl({**trunk, **stand_in}).items() if not k.startswith("final_layer.")}
    index = {name: i for i, name in _XLABS_HINT.items()}
    for key, value in sd.items():
        module, _, kind = key.rpartition(".")
        if module.startswith(("controlnet_blocks.", "controlnet_single_blocks.")):
            out[key] = value
        elif module == "controlnet_x_embedder":
            out[f"pos_embed_input.{kind}"] = value
        elif module.startswith("input_hint_block."):
            out[f"input_hint_block.{index[module[len('input_hint_block.'):]]}.{kind}"] = value
    return out


def tiny_sd35_controlnet(seed: int = 0, num_layers: int = 1, **overrides: Any) -> torch.nn.Module:
    """A random single-stream diffusers ``SD3ControlNetModel`` of Stability's SD3.5 ControlNet kind (no patch
    embedding or text stream of its own) fitting the demo's SD3.5 checkpoint: its width and pooled width, one
    head as ComfyUI reads it."""
    from diffusers import SD3ControlNetModel

    from ...demo import _SD3_DIT
    from .tiny_dit import TINY_SD3, randomize

    width = TINY_SD3["num_attention_heads"] * TINY_SD3["attention_head_dim"]
    cfg = {"patch_size": TINY_SD3["patch_size"], "in_channels": 16, "out_channels": 16, "num_layers": num_layers,
           "attention_head_dim": width, "num_attention_heads": 1, "joint_attention_dim": None,
           "caption_projection_dim": width, "pooled_projection_dim": _SD3_DIT["pooled_projection_dim"],
           "pos_embed_max_size": None, "pos_embed_type": None, "use_pos_embed": False,
           "force_zeros_for_pooled_projection": False, **overrides}
    return randomize(SD3ControlNetModel(**cfg), seed)


def sd35_control_type(name: str) -> int | None:
    """The ``control_type`` a Stability SD3.5 ControlNet file of this name holds (0 blur, 1 canny, 2 depth)."""
    low = name.lower()
    return next((i for i, kind in ((0, "blur"), (1, "canny"), (2, "depth")) if kind in low), None)


def write_sd35_controlnet(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Stability-layout SD3.5 ControlNet (``make_controlnet(arch="sd3.5-sai")``); the control type
    (canny, depth, blur) is read off the file name, as ComfyUI's templates name them."""
    from safetensors.torch import save_file

    from .controlnet_sd35 import sd35_diffusers_to_sai

    path = Path(path)
    sd = sd35_diffusers_to_sai(tiny_sd35_controlnet(seed).state_dict(), sd35_control_type(path.name))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
    os.replace(tmp, path)
    return path


def controlnet_diffusers_to_ldm(sd: dict[str, Any], prefix: str = "control_model.") -> dict[str, Any]:
    """A diffusers ``ControlNetModel`` state dict in lllyasviel's original key names (``control_model.*``)."""
    trunk = {k: v for k, v in sd.items() if not k.startswith("controlnet_")}
    out = keys.unet_diffusers_to_ldm(trunk)
    blocks = sorted({int(k.split(".")[2]) for k in sd if k.startswith("controlnet_cond_embedding.blocks.")})
    for key, value in sd.items():
        module, _, kind = key.rpartition(".")
        parts = module.split(".")
        if module.startswith("controlnet_down_blocks."):
            out[f"zero_convs.{parts[1]}.0.{kind}"] = value
        elif module == "controlnet_mid_block":
            out[f"middle_block_out.0.{kind}"] = value
        elif module == "controlnet_cond_embedding.conv_in":
            out[f"input_hint_block.0.{kind}"] = value
        elif module.startswith("controlnet_cond_embedding.blocks."):
            out[f"input_hint_block.{2 * int(parts[2]) + 2}.{kind}"] = value
        elif module == "controlnet_cond_embedding.conv_out":
            out[f"input_hint_block.{2 * len(blocks) + 2}.{kind}"] = value
    return {prefix + k: v for k, v in out.items()}


def make_controlnet(path: str | Path, *, arch: str = "sd1", layout: str = "ldm", seed: int = 0) -> Path:
    """Write a tiny ControlNet for the demo ``arch`` ("sd1", "sd2", "sdxl", "sd3"; "flux-instantx", "flux-union",
    "flux-xlabs" for the demo FLUX.1) checkpoint in ``layout`` ("ldm" .safetensors with ``control_model.`` keys,
    "ldm-pth" the same as a torch pickle, "diffusers" a single file, "diffusers-folder" a folder with config.json;
    "xlabs" or "ldm" for flux-xlabs: XLabs' own keys); the same weights for the same seed whatever the layout."""
    from safetensors.torch import save_file

    if arch == "sd3.5-sai":  # Stability's canny/depth/blur files: one layout, the control type from the name
        if layout.startswith("diffusers"):
            raise ValueError("Stability's SD3.5 ControlNets come in one layout (a single .safetensors file)")
        return write_sd35_controlnet(path, seed)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    xlabs = arch == "flux-xlabs" and layout in ("ldm", "xlabs")  # XLabs' own layout is their original one
    if not xlabs and (layout == "xlabs" or (arch == "sd3" or arch in FLUX_ARCHS) and layout.startswith("ldm")):
        raise ValueError(f"{arch} ControlNets come in the diffusers layout (flux-xlabs also in 'xlabs'); use "
                         "layout 'diffusers' or 'diffusers-folder'")
    if arch in FLUX_ARCHS:
        net = tiny_flux_controlnet(arch, seed)
    else:
        net = tiny_sd3_controlnet(seed) if arch == "sd3" else tiny_controlnet(arch, seed)
    path = Path(path)
    if layout == "diffusers-folder":
        net.save_pretrained(path)
        return path
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    if xlabs:
        sd = flux_controlnet_to_xlabs(sd)
    elif layout.startswith("ldm"):
        sd = controlnet_diffusers_to_ldm(sd)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if layout == "ldm-pth":
        torch.save({"state_dict": sd}, tmp)
    else:
        save_file(sd, str(tmp))
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return path
