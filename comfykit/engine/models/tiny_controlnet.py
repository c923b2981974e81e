"""Tiny random-weight ControlNets in the layouts users download, for tests and ``ck.demo`` (no hub access).

>>> make_controlnet("models/controlnet/tiny_sd15.pth", arch="sd1", layout="ldm")
>>> make_controlnet("models/controlnet/tiny_sd15_diffusers", arch="sd1", layout="diffusers-folder")
>>> make_controlnet("models/controlnet/tiny_flux_canny.safetensors", arch="flux-xlabs", layout="xlabs")
>>> make_controlnet("models/controlnet/t2iadapter_depth.pth", arch="sd1-t2i", layout="ldm-pth")

Each fits the demo checkpoint of the same arch (``comfykit.demo.make_checkpoint``): same channels, levels and text
width. Every weight is random, the zero-initialised output convolutions too, so the residuals are never zero.
T2I-Adapters ("sd1-t2i", "sd1-t2i-light", "sdxl-t2i") fit the UNet of :func:`t2i_unet_config` (the demo SD1 UNet
for "sd1-t2i"; the light and SDXL adapters need three levels, :func:`make_t2i_unet` writes one).
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
#: T2I-Adapter arch -> diffusers adapter_type
T2I_ARCHES = {"sd1-t2i": "full_adapter", "sd1-t2i-light": "light_adapter", "sdxl-t2i": "full_adapter_xl"}
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


def tiny_union_controlnet(seed: int = 0, promax: bool = False) -> torch.nn.Module:
    """A random diffusers ``ControlNetUnionModel`` for the demo SDXL UNet: 6 control types, or ProMax's 8."""
    from diffusers import ControlNetUnionModel

    kwargs = controlnet_kwargs("sdxl")
    width = kwargs["block_out_channels"][0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ControlNetUnionModel(**kwargs, num_control_type=8 if promax else 6, num_trans_channel=width,
                                   num_trans_head=8, num_trans_layer=1, num_proj_channel=width).eval()
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding",
                                    "spatial_ch_projs")):
                    p.copy_(torch.randn_like(p) * 0.1)  # diffusers starts these at zero
                elif name == "task_embedding":
                    p.mul_(0.1)
                elif "norm" in name:
                    p.add_(torch.randn_like(p) * 0.02)
    return net


def tiny_control_lora(arch: str = "sdxl", seed: int = 0, rank: int = 4) -> dict[str, torch.Tensor]:
    """A random Control-LoRA state dict (Stability's keys) for the demo UNet of ``arch``: ``up``/``down`` pairs
    for every encoder weight, its own biases and norms, and a hint encoder and zero convolutions."""
    from ...demo import _configs
    from .control_lora import ENCODER, MARKER
    from .unet import UNetModel

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UNetModel(_configs(arch)[0]).state_dict().items() if k.startswith(ENCODER)}
    control = controlnet_diffusers_to_ldm(tiny_controlnet(arch, seed).state_dict(), prefix="")
    gen = torch.Generator().manual_seed(seed)
    out = {MARKER: torch.tensor([])}
    for key, shape in shapes.items():
        if key.endswith(".weight") and len(shape) >= 2:
            kernel = [1] * (len(shape) - 2)
            out[key[:-7] + ".up"] = torch.randn(shape[0], rank, *kernel, generator=gen) * 0.1
            out[key[:-7] + ".down"] = torch.randn(rank, *shape[1:], generator=gen) * 0.1
        else:  # biases and norm scales are stored whole
            out[key] = torch.randn(shape, generator=gen) * 0.05 + (1.0 if key.endswith(".weight") else 0.0)
    out.update({k: v for k, v in control.items() if k.startswith(("zero_convs.", "input_hint_block.",
                                                                  "middle_block_out."))})
    return out


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
    from .controlnet_sd35 import CONTROL_TYPES

    low = name.lower()
    return next((i for i, kind in CONTROL_TYPES.items() if kind in low), None)


def write_sd35_controlnet(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Stability-layout SD3.5 ControlNet (``make_controlnet(arch="sd3.5-sai")``); the control type
    (canny, depth, blur) is read off the file name, as ComfyUI's templates name them."""
    from ...demo import _save
    from .controlnet_sd35 import sd35_diffusers_to_sai

    return _save(sd35_diffusers_to_sai(tiny_sd35_controlnet(seed).state_dict(), sd35_control_type(Path(path).name)),
                 path)


def t2i_unet_config(arch: str = "sd1-t2i") -> Any:
    """The tiny ``UNetConfig`` the T2I-Adapter of ``arch`` fits (every level with attention, as diffusers' SD1.5)."""
    from ...demo import _WIDTH, _configs
    from .unet import UNetConfig

    if arch == "sd1-t2i":
        return _configs("sd1")[0]
    if arch == "sd1-t2i-light":
        return UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=(1, 1, 1),
                          transformer_depth=(1, 1, 1), context_dim=_WIDTH, num_heads=8, use_linear=False)
    if arch == "sdxl-t2i":
        return UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=(1, 1, 1),
                          transformer_depth=(0, 1, 1), context_dim=2 * _WIDTH, num_head_channels=64,
                          use_linear=True, adm_in_channels=_WIDTH + 6 * 256)
    raise ValueError(f"unknown T2I-Adapter arch {arch!r}; choose one of {', '.join(T2I_ARCHES)}")


def make_t2i_unet(path: str | Path, arch: str = "sd1-t2i", seed: int = 0) -> Path:
    """Write a tiny random UNet (LDM keys, for UNETLoader / ``load_diffusion_model``) the adapter of ``arch`` fits."""
    from ...demo import _random, _save
    from .unet import UNetModel

    cfg = t2i_unet_config(arch)
    return _save(_random(lambda: UNetModel(cfg), seed).state_dict(), path)


def tiny_t2i_adapter(arch: str = "sd1-t2i", seed: int = 0, in_channels: int = 3) -> torch.nn.Module:
    """A random diffusers ``T2IAdapter`` fitting :func:`t2i_unet_config` of ``arch`` (deterministic per seed)."""
    from diffusers import T2IAdapter

    cfg = t2i_unet_config(arch)  # a ValueError naming the choices for an unknown arch
    kind = T2I_ARCHES[arch]
    widths = [cfg.model_channels * m for m in cfg.channel_mult]
    channels = {"full_adapter": widths, "light_adapter": widths[:-1], "full_adapter_xl": widths + widths[-1:]}[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = T2IAdapter(in_channels=in_channels, channels=channels, num_res_blocks=2,
                         downscale_factor=16 if kind == "full_adapter_xl" else 8, adapter_type=kind).eval()
        with torch.no_grad():
            for p in net.parameters():  # larger than the default init, so the features visibly steer
                p.mul_(3.0)
    return net


def t2i_diffusers_to_original(sd: dict[str, Any]) -> dict[str, Any]:
    """A diffusers ``T2IAdapter`` state dict in TencentARC's original key names (``conv_in``, ``body.N.*``)."""
    out = {}
    light = "adapter.conv_in.weight" not in sd
    for key, value in sd.items():
        key = key.removeprefix("adapter.")
        parts = key.split(".")
        if parts[0] == "body" and light and parts[2] == "resnets":
            key = ".".join(["body", parts[1], "body", *parts[3:]])
        elif parts[0] == "body" and parts[2] == "resnets":  # full: a flat list of 2 res blocks per level
            key = ".".join(["body", str(2 * int(parts[1]) + int(parts[3])), *parts[4:]])
        elif parts[0] == "body" and not light and parts[2] == "in_conv":
            key = ".".join(["body", str(2 * int(parts[1])), *parts[2:]])
        out[key] = value
    return out


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
    """Write a tiny ControlNet for the demo ``arch`` checkpoint in ``layout``; the same weights for the same seed
    whatever the layout.

    ``arch``: "sd1", "sd2", "sdxl", "sd3"; Stability's SD3.5 "sd3.5-sai" (one layout; canny/depth/blur from the file
    name); FLUX.1 "flux-instantx", "flux-union", "flux-xlabs"; T2I-Adapters "sd1-t2i", "sd1-t2i-light", "sdxl-t2i";
    union ControlNets "sdxl-union", "sdxl-union-promax"; Control-LoRAs "sdxl-control-lora", "sd1-control-lora"
    (always one .safetensors file). ``layout``: "ldm" (the original keys, lllyasviel's ``control_model.*``,
    TencentARC's or XLabs', .safetensors), "ldm-pth" (the same as a torch pickle), "diffusers" (a single file),
    "diffusers-folder" (a folder with config.json), "xlabs" (flux-xlabs only: XLabs' keys).
    """
    if arch == "sd3.5-sai":  # Stability's canny/depth/blur files: one layout, the control type from the name
        if layout.startswith("diffusers"):
            raise ValueError("Stability's SD3.5 ControlNets come in one layout (a single .safetensors file)")
        return write_sd35_controlnet(path, seed)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if arch == "flux-xlabs" and layout in ("ldm", "xlabs"):  # XLabs' own layout is their original one
        return _write(tiny_flux_controlnet(arch, seed), path, "ldm", flux_controlnet_to_xlabs)
    if layout == "xlabs":
        raise ValueError("the 'xlabs' layout is for arch 'flux-xlabs' only")
    if arch in T2I_ARCHES:
        return _write(tiny_t2i_adapter(arch, seed), path, layout, t2i_diffusers_to_original)
    if arch.endswith("-control-lora"):  # Stability's files: one .safetensors, keys of their own
        from ...demo import _save

        return _save(tiny_control_lora(arch.removesuffix("-control-lora"), seed), path)
    if (arch == "sd3" or arch in FLUX_ARCHS or arch.startswith("sdxl-union")) and layout.startswith("ldm"):
        raise ValueError(f"{arch} ControlNets come in the diffusers layout; use layout 'diffusers' or "
                         "'diffusers-folder'")
    if arch.startswith("sdxl-union"):
        return _write(tiny_union_controlnet(seed, promax=arch.endswith("promax")), path, layout, None)
    if arch in FLUX_ARCHS:
        return _write(tiny_flux_controlnet(arch, seed), path, layout, None)
    net = tiny_sd3_controlnet(seed) if arch == "sd3" else tiny_controlnet(arch, seed)
    return _write(net, path, layout, controlnet_diffusers_to_ldm)


def _write(net: torch.nn.Module, path: str | Path, layout: str, to_original: Any) -> Path:
    """Save a diffusers module in ``layout``; ``to_original`` renames its state dict for the "ldm" layouts."""
    from ...demo import _save

    path = Path(path)
    if layout == "diffusers-folder":
        net.save_pretrained(path)
        return path
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    if layout.startswith("ldm"):
        sd = to_original(sd)
    if layout != "ldm-pth":
        return _save(sd, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"state_dict": sd}, tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return path
