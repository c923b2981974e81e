"""Read a checkpoint (single file or diffusers folder), detect SD1/SD2/SDXL, infer shapes, build and load."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from . import keys
from .clip import CLIPConfig, CLIPTextModel, _heads_for
from .diffusion import VAE, DiffusionModel
from .text_encoder import ClipSlot, TextEncoder
from .tokenizer import EOS
from .unet import UNetConfig, UNetModel
from .vae import AutoencoderKL, VAEConfig

try:
    from ..sampling import latent_formats as _lf
except ImportError:  # pragma: no cover - the sampling package is written in parallel
    _lf = None


def latent_format_for(arch: str) -> Any:
    """SD1/SD2 share the SD15 latent space; SDXL has its own scale."""
    if _lf is None:
        return None
    return _lf.SDXL if arch == "sdxl" else _lf.SD15


# -- reading ----------------------------------------------------------------------------------------------------
def _check_safetensors_header(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelError(f"{path}: not a safetensors file (only {size} bytes); re-download it")
        n = struct.unpack("<Q", head)[0]
        if n > size - 8 or n > 100_000_000:
            raise ModelError(f"{path}: not a safetensors file (header is {head!r}); re-download it")
        header = f.read(n)
    try:
        meta = json.loads(header)
    except (ValueError, RecursionError):  # RecursionError: a header nested thousands of levels deep
        raise ModelError(f"{path}: not a safetensors file (its header is not JSON); re-download it") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: not a safetensors file (its header is a JSON {type(meta).__name__}, not an "
                         "object); re-download it")
    end = 0
    for name, entry in meta.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise ModelError(f"{path}: damaged safetensors header (tensor {str(name)[:80]!r} has no valid "
                             "data_offsets); re-download it")
        end = max(end, offsets[1])
    if 8 + n + end > size:
        raise ModelError(f"{path}: truncated ({size} bytes, the header promises {8 + n + end}); "
                         "the download was cut short, re-download it")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors`, `.ckpt`, `.pt`, `.pth` or `.bin` file (nested `state_dict` unwrapped)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file; put it there or pass the right path")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder; load_checkpoint() reads diffusers folders, read_state_dict() files")
    if path.suffix in (".safetensors", ".sft"):
        _check_safetensors_header(path)
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:
            raise ModelError(f"{path}: cannot read this safetensors file ({e}); re-download it") from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: cannot read it as a torch checkpoint ({first}); if it is a pickle with custom "
                         "classes convert it to .safetensors, else re-download it") from None
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelError(f"{path}: holds a {type(data).__name__}, not a state dict of tensors")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _unknown(path: Path, sd: dict[str, Any]) -> ModelError:
    """Explain what a file without UNet keys looks like, so the user can move it to the right folder."""
    names = list(sd)
    if any(keys.lora_base_name(k) for k in names):
        return ModelError(f"{path}: no UNet keys found: this looks like a LoRA, put it in models/loras")
    if any(k.startswith(("encoder.", "decoder.", "first_stage_model.encoder.")) for k in names):
        return ModelError(f"{path}: no UNet keys found: this looks like a VAE, put it in models/vae")
    if any(k.startswith("text_model.") or "emb_params" in k or "string_to_param" in k for k in names) or len(names) < 3:
        return ModelError(f"{path}: no UNet keys found: this looks like a text encoder or an embedding")
    sample = ", ".join(names[:3])
    return ModelError(f"{path}: no UNet keys found (keys start {sample}); this is not an SD1/SD2/SDXL checkpoint")


# -- shape inference --------------------------------------------------------------------------------------------
def _count(sd: dict[str, Any], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_unet_config(sd: dict[str, Any], arch: str) -> UNetConfig:
    """UNetConfig from LDM UNet tensor shapes (levels, res blocks, depths, context, linear proj, adm)."""
    w = sd["input_blocks.0.0.weight"]
    mc = w.shape[0]
    mults, res_blocks, depths = [], [], []
    level_blocks, level_depth, mult = 0, 0, None
    for n in range(1, _count(sd, r"input_blocks\.(\d+)\.")):
        if f"input_blocks.{n}.0.op.weight" in sd:
            mults.append(mult)
            res_blocks.append(level_blocks)
            depths.append(level_depth)
            level_blocks, level_depth = 0, 0
            continue
        mult = sd[f"input_blocks.{n}.0.in_layers.2.weight"].shape[0] // mc
        level_blocks += 1
        level_depth = _count(sd, rf"input_blocks\.{n}\.1\.transformer_blocks\.(\d+)\.")
    mults.append(mult)
    res_blocks.append(level_blocks)
    depths.append(level_depth)
    out_depths = tuple(_count(sd, rf"output_blocks\.{n}\.1\.transformer_blocks\.(\d+)\.")
                       for n in range(_count(sd, r"output_blocks\.(\d+)\.")))
    ctx = next((v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight")), 768)
    proj = next((v for k, v in sd.items() if k.endswith("proj_in.weight")), None)
    adm = sd["label_emb.0.0.weight"].shape[1] if "label_emb.0.0.weight" in sd else None
    return UNetConfig(
        in_channels=w.shape[1], out_channels=sd["out.2.weight"].shape[0], model_channels=mc,
        channel_mult=tuple(mults), num_res_blocks=tuple(res_blocks), transformer_depth=tuple(depths),
        transformer_depth_output=out_depths,
        transformer_depth_middle=_count(sd, r"middle_block\.1\.transformer_blocks\.(\d+)\."),
        context_dim=ctx, num_heads=8, num_head_channels=-1 if arch == "sd1" else 64,
        use_linear=proj is not None and proj.ndim == 2, adm_in_channels=adm)


def infer_vae_config(sd: dict[str, Any]) -> VAEConfig:
    """VAEConfig from LDM autoencoder tensor shapes."""
    try:
        ch = sd["encoder.conv_in.weight"].shape[0]
        levels = _count(sd, r"encoder\.down\.(\d+)\.")
        mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
        return VAEConfig(ch=ch, ch_mult=mult, num_res_blocks=_count(sd, r"encoder\.down\.0\.block\.(\d+)\."),
                         z_channels=sd["decoder.conv_in.weight"].shape[1],
                         in_channels=sd["encoder.conv_in.weight"].shape[1],
                         out_ch=sd["decoder.conv_out.weight"].shape[0])
    except KeyError as e:
        raise ModelError(f"VAE weights are incomplete (missing {e.args[0]}); re-download the file") from None


def infer_clip_config(sd: dict[str, Any], activation: str, heads: int | None = None) -> CLIPConfig:
    """CLIPConfig from HF-layout CLIP tensor shapes."""
    tok = sd["text_model.embeddings.token_embedding.weight"]
    proj = sd.get("text_projection.weight")
    return CLIPConfig(
        vocab_size=tok.shape[0], width=tok.shape[1],
        layers=_count(sd, r"text_model\.encoder\.layers\.(\d+)\."), heads=heads or _heads_for(tok.shape[1]),
        max_positions=sd["text_model.embeddings.position_embedding.weight"].shape[0],
        intermediate=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        projection_dim=None if proj is None else proj.shape[0], activation=activation)


# -- building ---------------------------------------------------------------------------------------------------
def _load_module(module_fn, sd: dict[str, Any], what: str, path: Path) -> nn.Module:
    """Build on the meta device (no random init) and assign the file's tensors; mismatches -> ModelError."""
    with torch.device("meta"):
        module = module_fn()
    result = module.load_state_dict(sd, strict=False, assign=True)
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        raise ModelError(f"{path}: the {what} weights do not fit the architecture read off their shapes "
                         f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                         f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''}); the file may be damaged")
    return module


def default_dtypes(device: torch.device, dtype: torch.dtype | None) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    """(unet, text encoder, vae) dtypes: fp32 on CPU; fp16/fp16/bf16 (fp32 without bf16) on GPU."""
    if device.type == "cpu":
        base = dtype or torch.float32
        return base, torch.float32, torch.float32
    vae = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return dtype or torch.float16, torch.float16, vae


def _detect_arch(parts: dict[str, dict[str, Any]]) -> str:
    unet = parts["unet"]
    if "clip_g" in parts or "label_emb.0.0.weight" in unet:
        return "sdxl"
    if "clip_h" in parts:
        return "sd2"
    proj = next((v for k, v in unet.items() if k.endswith("proj_in.weight")), None)
    if "clip_l" not in parts and proj is not None and proj.ndim == 2:
        return "sd2"
    return "sd1"


def _detect_prediction(arch: str, full: dict[str, Any], unet: dict[str, Any]) -> str:
    if "v_pred" in full or "edm_vpred.sigma_max" in full:
        return "v"
    if arch == "sd2":
        # ComfyUI's heuristic: v-prediction SD2 models have widely spread norm1 biases in the last attention block
        last = [k for k in unet if re.match(r"output_blocks\.\d+\.1\.transformer_blocks\.0\.norm1\.bias$", k)]
        if last:
            key = max(last, key=lambda k: int(k.split(".")[1]))
            if unet[key].float().std() > 0.09:
                return "v"
    return "eps"


def _text_encoder(parts: dict[str, dict[str, Any]], arch: str, path: Path, heads: dict[str, int],
                  activations: dict[str, str], embeddings_dir) -> TextEncoder:
    names = {"sd1": ["clip_l"], "sd2": ["clip_h"], "sdxl": ["clip_l", "clip_g"]}[arch]
    clips = {}
    for name in names:
        sd = parts.get(name)
        if not sd:
            raise ModelError(f"{path}: no {name} text encoder weights found; this {arch} checkpoint is incomplete "
                             "(load a full checkpoint, or a separate CLIP file)")
        default_act = "quick_gelu" if name == "clip_l" else "gelu"
        try:
            cfg = infer_clip_config(sd, activations.get(name, default_act), heads.get(name))
        except KeyError as e:
            raise ModelError(f"{path}: the {name} text encoder weights are incomplete (missing {e.args[0]}); "
                             "re-download the file") from None
        clips[name] = _load_module(lambda cfg=cfg: CLIPTextModel(cfg), sd, name, path)
    if arch == "sd1":
        slots = [ClipSlot("clip_l")]
    elif arch == "sd2":
        slots = [ClipSlot("clip_h", layer_idx=-2, pad_token=0)]
    else:
        slots = [ClipSlot("clip_l", -2, False, EOS), ClipSlot("clip_g", -2, False, 0)]
    pooled = {"sd1": "clip_l", "sd2": "clip_h", "sdxl": "clip_g"}[arch]
    return TextEncoder(clips, slots, pooled, embeddings_dir, name=path.name)


def _diffusers_folder(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict, dict]:
    """A diffusers-format folder -> our parts (LDM UNet/VAE names, HF CLIP names) + scheduler config."""
    def read(sub: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        folder = path / sub
        if not folder.is_dir():
            return None
        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        if not files:
            raise ModelError(f"{folder}: no .safetensors or .bin weights in it")
        sd: dict[str, Any] = {}
        for f in files:
            sd.update(read_state_dict(f))
        cfg_file = folder / "config.json"
        return sd, (json.loads(cfg_file.read_text()) if cfg_file.is_file() else {})

    unet, vae = read("unet"), read("vae")
    if unet is None:
        raise ModelError(f"{path}: a folder without unet/; pass a checkpoint file or a diffusers-format folder")
    try:
        parts: dict[str, dict[str, Any]] = {"unet": keys.unet_diffusers_to_ldm(unet[0])}
    except (KeyError, ValueError) as e:
        raise ModelError(f"{path / 'unet'}: not a UNet2DConditionModel this loader knows ({e}); "
                         "SD1/SD2/SDXL diffusers folders are supported") from None
    parts["vae"] = keys.vae_state_dict(vae[0]) if vae else {}
    heads, acts = {}, {}
    te, te2 = read("text_encoder"), read("text_encoder_2")
    if te2 is not None:
        parts["clip_l"], parts["clip_g"] = keys.hf_clip_keys(te[0]), keys.hf_clip_keys(te2[0])
        for name, (_, cfg) in (("clip_l", te), ("clip_g", te2)):
            heads[name], acts[name] = cfg.get("num_attention_heads"), cfg.get("hidden_act", "quick_gelu")
    elif te is not None:
        name = "clip_l" if te[1].get("hidden_act", "quick_gelu") == "quick_gelu" else "clip_h"
        parts[name] = keys.hf_clip_keys(te[0])
        heads[name], acts[name] = te[1].get("num_attention_heads"), te[1].get("hidden_act", "quick_gelu")
    sched_file = path / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_file.read_text()) if sched_file.is_file() else {}
    unet_heads = unet[1].get("attention_head_dim")
    return parts, sched, {k: v for k, v in heads.items() if v}, {"acts": acts, "unet_heads": unet_heads}


def load_checkpoint(path: str | Path, *, device: Any = None, dtype: torch.dtype | None = None,
                    embeddings_dir: str | Path | None = None) -> tuple[DiffusionModel, TextEncoder, VAE]:
    """Load an SD1.x / SD2.x / SDXL checkpoint (file or diffusers folder) -> (DiffusionModel, TextEncoder, VAE).

    >>> model, clip, vae = load_checkpoint("models/checkpoints/comfykit-demo-sd15.safetensors")
    """
    path = Path(path)
    device = torch.device(device or "cpu")
    heads: dict[str, int] = {}
    acts: dict[str, str] = {}
    unet_heads = None
    if path.is_dir():
        parts, sched, heads, extra = _diffusers_folder(path)
        acts, unet_heads = extra["acts"], extra["unet_heads"]
        full: dict[str, Any] = {"v_pred": 1} if sched.get("prediction_type") == "v_prediction" else {}
    else:
        full = read_state_dict(path)
        parts = keys.split_checkpoint(full)
        if not parts["unet"]:
            raise _unknown(path, full)
    if not parts["vae"]:
        raise ModelError(f"{path}: has a UNet but no VAE weights (first_stage_model.*); load the VAE separately "
                         "with load_vae() / VAELoader")
    arch = _detect_arch(parts)
    try:
        ucfg = infer_unet_config(parts["unet"], arch)
        vcfg = infer_vae_config(parts["vae"])
    except (KeyError, IndexError, TypeError) as e:
        raise ModelError(f"{path}: UNet/VAE weights are incomplete ({e!r}); re-download the file") from None
    if unet_heads is not None and arch == "sd1":  # diffusers folders name their head count
        ucfg.num_heads = unet_heads if isinstance(unet_heads, int) else unet_heads[0]
    unet_dtype, te_dtype, vae_dtype = default_dtypes(device, dtype)
    unet = _load_module(lambda: UNetModel(ucfg), parts["unet"], "UNet", path).to(device, unet_dtype)
    vae = _load_module(lambda: AutoencoderKL(vcfg), parts["vae"], "VAE", path).to(device, vae_dtype)
    te = _text_encoder(parts, arch, path, heads, acts, embeddings_dir).to(device, te_dtype)
    prediction = _detect_prediction(arch, full, parts["unet"])
    model = DiffusionModel(unet.eval(), arch, prediction, latent_format_for(arch), name=path.name)
    return model, te, VAE(vae.eval(), name=path.name)


def load_vae(path: str | Path, *, device: Any = None, dtype: torch.dtype | None = None) -> VAE:
    """A standalone VAE file (LDM keys with or without `first_stage_model.`, or diffusers keys) -> VAE."""
    path = Path(path)
    sd = keys.vae_state_dict(read_state_dict(path))
    if "decoder.conv_in.weight" not in sd:
        raise ModelError(f"{path}: no VAE decoder weights found; is this a VAE file (models/vae)?")
    device = torch.device(device or "cpu")
    vae_dtype = dtype or default_dtypes(device, None)[2]
    module = _load_module(lambda: AutoencoderKL(infer_vae_config(sd)), sd, "VAE", path).to(device, vae_dtype)
    return VAE(module.eval(), name=path.name)
