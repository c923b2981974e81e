"""Tiny random-weight checkpoints in the original layouts, so every pipeline runs offline in well under a second.

>>> from comfykit import demo
>>> name = demo.ensure_demo_checkpoint("models")   # models/checkpoints/comfykit-demo-sd15.safetensors

The images they make are noise, but every step (tokenizer, CLIP, UNet, VAE, LoRA) is the real code path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEMO_CHECKPOINT = "comfykit-demo-sd15.safetensors"
ARCHES = ("sd1", "sd2", "sd2-v", "sdxl", "sdxl-refiner", "sd1-inpaint", "sd2-inpaint")

# tiny shapes: 32-channel GroupNorms (the `norm_groups` rule gives 32 groups), the full 49408-token vocabulary
_WIDTH = 32


def _configs(arch: str) -> tuple[Any, Any, dict[str, Any]]:
    from .engine.models.clip import CLIPConfig
    from .engine.models.unet import UNetConfig
    from .engine.models.vae import VAEConfig

    if arch not in ARCHES:
        raise ValueError(f"unknown demo arch {arch!r}; choose one of {', '.join(ARCHES)}")
    vae = VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, z_channels=4)
    # inpainting UNets take 9 channels: the latent, the mask and the masked image's latent
    in_channels = 9 if arch.endswith("-inpaint") else 4
    if arch in ("sd1", "sd1-inpaint"):
        unet = UNetConfig(in_channels=in_channels, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
                          transformer_depth=(1, 1), context_dim=_WIDTH, num_heads=8, use_linear=False)
        clips = {"clip_l": CLIPConfig(width=_WIDTH, layers=2, heads=2, intermediate=64)}
    elif arch in ("sd2", "sd2-v", "sd2-inpaint"):
        unet = UNetConfig(in_channels=in_channels, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
                          transformer_depth=(1, 1), context_dim=_WIDTH, num_head_channels=64, use_linear=True)
        clips = {"clip_h": CLIPConfig(width=_WIDTH, layers=2, heads=2, intermediate=64, projection_dim=_WIDTH,
                                      activation="gelu")}
    elif arch == "sdxl-refiner":  # OpenCLIP-G only; the adm vector ends in 5 embedded numbers, not 6
        unet = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(0, 1),
                          context_dim=_WIDTH, num_head_channels=64, use_linear=True,
                          adm_in_channels=_WIDTH + 5 * 256)
        clips = {"clip_g": CLIPConfig(width=_WIDTH, layers=2, heads=2, intermediate=64, projection_dim=_WIDTH,
                                      activation="gelu")}
    else:
        unet = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(0, 1),
                          context_dim=2 * _WIDTH, num_head_channels=64, use_linear=True,
                          adm_in_channels=_WIDTH + 6 * 256)
        clips = {"clip_l": CLIPConfig(width=_WIDTH, layers=2, heads=2, intermediate=64),
                 "clip_g": CLIPConfig(width=_WIDTH, layers=2, heads=2, intermediate=64, projection_dim=_WIDTH,
                                      activation="gelu")}
    return unet, vae, clips


def _random(module_fn, seed: int):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = module_fn()
        # LayerNorm/GroupNorm start at 1/0: perturb them so tests see every weight matter
        for name, p in module.named_parameters():
            if "norm" in name:
                p.data.add_(torch.randn_like(p) * 0.02)
    return module


def _save(sd: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return path


def _components(arch: str, seed: int) -> dict[str, Any]:
    from .engine.models.clip import CLIPTextModel
    from .engine.models.unet import UNetModel
    from .engine.models.vae import AutoencoderKL

    ucfg, vcfg, ccfgs = _configs(arch)
    out = {"unet": _random(lambda: UNetModel(ucfg), seed), "vae": _random(lambda: AutoencoderKL(vcfg), seed + 1)}
    for i, (name, cfg) in enumerate(ccfgs.items()):
        out[name] = _random(lambda cfg=cfg: CLIPTextModel(cfg), seed + 2 + i)
    return out


def make_checkpoint(path: str | Path, *, arch: str = "sd1", seed: int = 0) -> Path:
    """Write a tiny random-weight single-file checkpoint (one of ARCHES: "sd1", "sd2", "sd2-v", "sdxl",
    "sdxl-refiner", or the 9-channel inpainting "sd1-inpaint" / "sd2-inpaint"), deterministic per seed."""
    from .engine.models import keys

    parts = _components(arch, seed)
    sd: dict[str, Any] = {}
    sd.update({keys.UNET_PREFIX + k: v for k, v in parts["unet"].state_dict().items()})
    sd.update({"first_stage_model." + k: v for k, v in parts["vae"].state_dict().items()})
    if arch in ("sd1", "sd1-inpaint"):
        sd.update({"cond_stage_model.transformer." + k: v for k, v in parts["clip_l"].state_dict().items()})
    elif arch in ("sd2", "sd2-v", "sd2-inpaint"):
        clip = parts["clip_h"]
        sd.update({"cond_stage_model.model." + k: v
                   for k, v in keys.hf_to_openclip(clip.state_dict(), clip.config.layers).items()})
    elif arch == "sdxl-refiner":
        clip = parts["clip_g"]
        sd.update({"conditioner.embedders.0.model." + k: v
                   for k, v in keys.hf_to_openclip(clip.state_dict(), clip.config.layers).items()})
    else:
        sd.update({"conditioner.embedders.0.transformer." + k: v for k, v in parts["clip_l"].state_dict().items()})
        clip = parts["clip_g"]
        sd.update({"conditioner.embedders.1.model." + k: v
                   for k, v in keys.hf_to_openclip(clip.state_dict(), clip.config.layers).items()})
    if arch == "sd2-v":
        import torch

        sd["v_pred"] = torch.tensor([])  # the marker key ComfyUI reads for v-prediction
    return _save(sd, path, {"comfykit.demo": arch})


def make_vae(path: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny standalone VAE file (LDM keys, no prefix): the VAE of `make_checkpoint(seed=seed)`."""
    from .engine.models.vae import AutoencoderKL

    vcfg = _configs("sd1")[1]
    return _save(_random(lambda: AutoencoderKL(vcfg), seed + 1).state_dict(), path)


# -- FLUX.1 and SD3.5 -------------------------------------------------------------------------------------------
#: Tiny widths that fit together: the transformer's text width is the T5's, its pooled width the CLIP(s)'
_FLUX_DIT = {"joint_attention_dim": 32, "pooled_projection_dim": 32}
_SD3_DIT = {"joint_attention_dim": 32, "caption_projection_dim": 32, "pooled_projection_dim": 32}
_T5 = {"d_model": 32, "num_layers": 2, "num_heads": 4, "d_kv": 8, "d_ff": 48}
FAMILIES = ("sd15", "flux", "flux-dev", "sd3")
#: FLUX.1 dev variants whose latent takes concatenated channels: Fill (mask + masked image), Canny/Depth (the hint)
_FLUX_WIDE = {"flux-fill": 384, "flux-canny": 128, "flux-depth": 128}


def _vae16(seed: int) -> dict[str, Any]:
    """A tiny 16-channel VAE (8x, no quant convs), LDM keys without a prefix: FLUX.1's ae.safetensors layout."""
    from .engine.models.vae import AutoencoderKL, VAEConfig

    cfg = VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, z_channels=16, quant_conv=False)
    return _random(lambda: AutoencoderKL(cfg), seed).state_dict()


def _dit_parts(family: str, seed: int, t5: bool = True) -> dict[str, dict[str, Any]]:
    """Tiny random pieces of a FLUX.1 (schnell or dev) or SD3.5 model, each in the layout its real files use."""
    from .engine.models import tiny_dit
    from .engine.models import tiny_text_encoders as tte

    if family in ("flux", "flux-dev", *_FLUX_WIDE):
        wide = {"in_channels": _FLUX_WIDE[family]} if family in _FLUX_WIDE else {}
        parts = {"unet": tiny_dit.flux_pieces(family != "flux", prefix="", seed=seed, **_FLUX_DIT, **wide),
                 "clip_l": tte.clip_l_state_dict(width=32, seed=seed + 1)}
    elif family == "sd3":
        parts = {"unet": tiny_dit.sd3_pieces(prefix="", seed=seed, **_SD3_DIT),
                 "clip_l": tte.clip_l_state_dict(width=16, seed=seed + 1),
                 "clip_g": tte.clip_g_state_dict(width=16, projection_dim=16, seed=seed + 2)}
    else:
        raise ValueError(f"unknown family {family!r}; choose one of flux, flux-dev, {', '.join(_FLUX_WIDE)}, sd3")
    if t5:
        parts["t5xxl"] = tte.t5xxl_state_dict(**_T5, seed=seed + 3)
    parts["vae"] = _vae16(seed + 4)
    return parts


def make_dit_checkpoint(path: str | Path, family: str = "flux", *, seed: int = 0, t5: bool = True,
                        text_encoders: bool = True, vae: bool = True) -> Path:
    """Write a tiny all-in-one FLUX.1 ("flux" = schnell, "flux-dev") or SD3.5 ("sd3") checkpoint, laid out as
    ComfyUI's (``model.diffusion_model.*``, ``text_encoders.<name>.transformer.*``, ``vae.*``).

    ``text_encoders=False`` leaves them out, as Stability's SD3.5 single files do; ``vae=False`` as well gives a
    bare transformer (what UNETLoader, not CheckpointLoaderSimple, loads).
    """
    from .engine.models.tiny_text_encoders import checkpoint_keys

    parts = _dit_parts(family, seed, t5)
    sd = {"model.diffusion_model." + k: v for k, v in parts.pop("unet").items()}
    vae_sd = parts.pop("vae")
    if vae:
        sd.update({"vae." + k: v for k, v in vae_sd.items()})
    if text_encoders:
        sd.update(checkpoint_keys(parts))
    return _save(sd, path, {"comfykit.demo": family})


def make_dit_files(models_dir: str | Path, family: str = "flux", *, seed: int = 0, fp8: bool = False,
                   names: dict[str, str] | None = None) -> dict[str, str]:
    """Write a tiny FLUX.1/SD3.5 model as the separate files ComfyUI's split-file workflows load.

    ``models_dir/diffusion_models/<unet>``, ``text_encoders/<clip_l|clip_g|t5xxl>``, ``vae/<vae>``; ``names`` maps
    those roles to file names (defaults: the names ComfyUI's templates use). ``fp8=True`` stores the T5 as scaled
    fp8 and the transformer as fp8 e4m3fn, as the files people download for 16 GB GPUs are. Returns role -> name.
    """
    import torch

    from .engine.models.tiny_text_encoders import to_fp8

    defaults = {"flux": {"unet": "flux1-schnell.safetensors", "vae": "ae.safetensors"},
                "flux-dev": {"unet": "flux1-dev.safetensors", "vae": "ae.safetensors"},
                "flux-fill": {"unet": "flux1-fill-dev.safetensors", "vae": "ae.safetensors"},
                "flux-canny": {"unet": "flux1-canny-dev.safetensors", "vae": "ae.safetensors"},
                "flux-depth": {"unet": "flux1-depth-dev.safetensors", "vae": "ae.safetensors"},
                "sd3": {"unet": "sd3.5_medium.safetensors", "vae": "sd35_vae.safetensors",
                        "clip_g": "clip_g.safetensors"}}[family]
    roles = {"clip_l": "clip_l.safetensors",
             "t5xxl": "t5xxl_fp8_e4m3fn_scaled.safetensors" if fp8 else "t5xxl_fp16.safetensors",
             **defaults, **(names or {})}
    folders = {"unet": "diffusion_models", "vae": "vae"}
    models = Path(models_dir)
    for role, part in _dit_parts(family, seed).items():
        if fp8 and role == "t5xxl":
            part = to_fp8(part, torch.float8_e4m3fn, scaled=True)
        elif fp8 and role == "unet":
            part = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in part.items()}
        _save(part, models / folders.get(role, "text_encoders") / roles[role])
    return roles


def ensure_demo_checkpoint(models_dir: str | Path) -> str:
    """Create `models_dir/checkpoints/comfykit-demo-sd15.safetensors` if missing; return its file name."""
    target = Path(models_dir) / "checkpoints" / DEMO_CHECKPOINT
    if not target.is_file():
        make_checkpoint(target, arch="sd1", seed=0)
    return DEMO_CHECKPOINT


def make_lora(path: str | Path, checkpoint_path: str | Path, *, style: str = "kohya", rank: int = 4,
              seed: int = 0) -> Path:
    """Write a random LoRA for a checkpoint: kohya (`lora_unet_...lora_down`) or diffusers/PEFT (`lora_A`) keys.

    For a FLUX.1 or SD3 model file (or checkpoint) the LoRA is one for that transformer; its styles are also "bfl" /
    "sai" (original names, `diffusion_model.double_blocks...lora_A`), and for FLUX.1 "xlabs" and "bfl-control" (BFL's
    Canny/Depth control LoRAs, 128 channels in).
    """
    import torch
    from torch import nn

    from .engine.models import keys
    from .engine.models.checkpoint import load_checkpoint, read_state_dict
    from .engine.models.dit_common import find_layout

    found = find_layout(read_state_dict(checkpoint_path))
    if found and found[0].startswith(("flux", "sd3")):
        from .engine.models.tiny_lora import make_dit_lora

        layout = {"diffusers": "peft"}.get(style, style)
        return make_dit_lora(path, checkpoint_path, layout=layout, rank=rank, seed=seed)
    if style not in ("kohya", "diffusers"):
        raise ValueError(f"unknown LoRA style {style!r}; choose 'kohya' or 'diffusers'")
    model, clip, _ = load_checkpoint(checkpoint_path)
    names = keys.unet_ldm_to_diffusers_names(model.config)
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, Any] = {}

    def add(name: str, module: nn.Module) -> None:
        w = module.weight
        shape_in = w.shape[1] if w.ndim == 2 else w.shape[1] * w.shape[2] * w.shape[3]
        down = torch.randn(rank, shape_in, generator=gen) * 0.1
        up = torch.randn(w.shape[0], rank, generator=gen) * 0.1
        if w.ndim == 4:
            down, up = down.reshape(rank, *w.shape[1:]), up[:, :, None, None]
        if style == "kohya":
            sd[name + ".lora_down.weight"], sd[name + ".lora_up.weight"] = down, up
            sd[name + ".alpha"] = torch.tensor(float(rank) / 2)
        else:
            sd[name + ".lora_A.weight"], sd[name + ".lora_B.weight"] = down, up

    for mod_name, module in model.unet.named_modules():
        if isinstance(module, nn.Linear) and (".attn" in mod_name or ".ff." in mod_name):
            dif = keys.unet_ldm_to_diffusers(mod_name, names)
            add(("lora_unet_" + dif.replace(".", "_")) if style == "kohya" else "unet." + dif, module)
    multi = len(clip.clips) > 1
    for i, module_root in enumerate(clip.clips.values()):
        for mod_name, module in module_root.named_modules():
            if isinstance(module, nn.Linear) and ".encoder.layers." in mod_name:
                if style == "kohya":
                    prefix = (f"lora_te{i + 1}_" if multi else "lora_te_")
                    add(prefix + mod_name.replace(".", "_"), module)
                else:
                    add(("text_encoder_2." if i else "text_encoder.") + mod_name, module)
    return _save(sd, path)


#: The upscale model ``ensure_demo_upscale_model`` writes (a 4x ESRGAN in the original key layout)
DEMO_UPSCALE_MODEL = "comfykit-demo-esrgan-x4.pth"


def make_upscale_model(path: str | Path, *, scale: int = 4, layout: str = "old", features: int = 16,
                       blocks: int = 1, growth: int = 8, unshuffle: int = 1, seed: int = 0) -> Path:
    """Write a small random-weight ESRGAN RRDBNet upscaler (scale 1, 2, 4 or 8), deterministic per seed.

    ``layout``: "old" (the ESRGAN repository's ``model.N`` keys, as 4x-UltraSharp) or "new" (Real-ESRGAN's
    ``conv_first`` / ``body.N``); ``unshuffle=2`` makes a Real-ESRGAN x2plus-style model (its scale is then 4 /
    unshuffle). ``.pth`` paths are written with ``torch.save`` as the originals are, others as safetensors.
    features=64, blocks=23, growth=32 is the real size (67 MB). The weights are a nearest-neighbour upscale plus
    random detail, so the output still shows the input.
    """
    import math

    from .engine.models import rrdb

    upsamples = round(math.log2(scale * unshuffle))
    if scale not in (1, 2, 4, 8) or 2 ** upsamples != scale * unshuffle:
        raise ValueError(f"scale must be 1, 2, 4 or 8 (and scale * unshuffle a power of two), got {scale}")
    config = rrdb.RRDBConfig(features=features, growth=growth, blocks=blocks, upsamples=upsamples,
                             unshuffle=unshuffle)
    sd = rrdb.make_state_dict(config, layout=layout, seed=seed)
    path = Path(path)
    if path.suffix in (".pth", ".pt", ".bin"):
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(sd, tmp)
        os.replace(tmp, path)
        return path
    return _save(sd, path)


def ensure_demo_upscale_model(models_dir: str | Path) -> str:
    """Create `models_dir/upscale_models/comfykit-demo-esrgan-x4.pth` if missing; return its file name."""
    target = Path(models_dir) / "upscale_models" / DEMO_UPSCALE_MODEL
    if not target.is_file():
        make_upscale_model(target)
    return DEMO_UPSCALE_MODEL


def make_diffusers_folder(path: str | Path, arch: str = "sd1", *, seed: int = 0) -> Path:
    """Write the same tiny model as `make_checkpoint(arch=, seed=)` as a diffusers-format folder."""
    from .engine.models import diffusers_export

    return diffusers_export.write_folder(Path(path), arch, _components(arch, seed), _configs(arch))


def make_controlnet(path: str | Path, *, arch: str = "sd1", layout: str = "ldm", seed: int = 0) -> Path:
    """Write a tiny ControlNet fitting `make_checkpoint(arch=)`: "ldm" (lllyasviel's `control_model.*` keys,
    .safetensors), "ldm-pth" (the same as a .pth pickle), "diffusers" (one file) or "diffusers-folder".

    FLUX.1 (fitting `make_dit_checkpoint("flux")` / "flux-dev"): arch "flux-instantx" (InstantX canny style),
    "flux-union" (Shakker-Labs Union-Pro style, 10 modes) in "diffusers"/"diffusers-folder", and "flux-xlabs"
    in XLabs' own layout ("xlabs") or diffusers'."""
    from .engine.models.tiny_controlnet import make_controlnet as write

    return write(path, arch=arch, layout=layout, seed=seed)
