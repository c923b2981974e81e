"""Read a checkpoint (single file or diffusers folder), detect its model family, infer shapes, build and load."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from . import keys
from .clip import CLIPConfig, CLIPTextModel, _heads_for
from .diffusion import VAE
from .dit_families import DIT_FAMILIES
from .family import DiffusionModel, ModelFamily
from .precision import precision_for
from .sd import UNET_FAMILIES, count_indices, infer_unet_config
from .text_encoder import ClipSlot, TextEncoder
from .tokenizer import EOS
from .vae import AutoencoderKL, VAEConfig

#: Every family the engine loads, most specific first: detection takes the first whose ``detect`` says yes.
FAMILIES: tuple[ModelFamily, ...] = DIT_FAMILIES + UNET_FAMILIES

__all__ = ["FAMILIES", "detect_family", "infer_unet_config", "infer_vae_config", "load_checkpoint",
           "load_diffusion_model", "load_vae", "read_state_dict"]


def detect_family(parts: dict[str, dict[str, Any]]) -> ModelFamily | None:
    """The family of a split checkpoint (``keys.split_checkpoint``), or None when no family knows it."""
    return next((f for f in FAMILIES if parts.get("unet") and f.detect(parts)), None)


# -- reading ----------------------------------------------------------------------------------------------------
#: safetensors dtype names -> torch dtypes
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def _safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(header length, header) of a safetensors file; ModelError when it is not one or is cut short."""
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
    return n, meta


def _mapped_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as its own copy-on-write memory map: nothing is read until used.

    One map per tensor, not one for the file: a tensor that is converted (fp16 -> fp32, moved to the GPU) and
    dropped unmaps its pages, so loading never holds a file page and its converted copy for the whole model.
    """
    import numpy as np

    n, meta = _safetensors_header(path)
    base = 8 + n
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        for name, info in meta.items():
            if name == "__metadata__":
                continue
            dtype = _ST_DTYPES.get(info["dtype"])
            if dtype is None:
                raise ModelError(f"{path}: tensor {name} has dtype {info['dtype']}, which torch cannot hold")
            start, stop = info["data_offsets"]
            if stop == start:
                out[name] = torch.empty(info["shape"], dtype=dtype)
                continue
            raw = np.memmap(f, dtype=np.uint8, mode="c", offset=base + start, shape=(stop - start,))
            out[name] = torch.from_numpy(raw).view(dtype).reshape(info["shape"])
    return out


class _Shape:
    """A tensor's shape read from a safetensors header, standing in for the tensor where only shapes are asked."""

    def __init__(self, shape: list[int]):
        self.shape = torch.Size(shape)
        self.ndim = len(shape)


def checkpoint_family(path: str | Path) -> str | None:
    """The family name of a checkpoint file ("sd1", "sdxl", "flux", "sd3", ...) from its header alone, or None.

    Only the safetensors header is read (key names and shapes), so asking about a 17 GB file costs milliseconds.
    """
    path = Path(path)
    if path.suffix not in (".safetensors", ".sft"):
        parts = keys.split_checkpoint(read_state_dict(path))
    else:
        header = _safetensors_header(path)[1]
        parts = keys.split_checkpoint({k: _Shape(v["shape"]) for k, v in header.items() if k != "__metadata__"},
                                      convert_text=False)
    family = detect_family(parts)
    return None if family is None else family.name


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors`, `.ckpt`, `.pt`, `.pth` or `.bin` file (nested `state_dict` unwrapped).

    Safetensors files and zip-format torch files are memory-mapped: a tensor is read from disk when it is used,
    in its stored dtype (fp8 stays fp8), and a dict of them costs no RAM until then.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file; put it there or pass the right path")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder; load_checkpoint() reads diffusers folders, read_state_dict() files")
    if path.suffix in (".safetensors", ".sft"):
        try:
            return _mapped_safetensors(path)
        except ModelError:
            raise
        except Exception as e:
            raise ModelError(f"{path}: cannot read this safetensors file ({e}); re-download it") from None
    try:
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (pre-zip) torch files cannot be mapped
            if "mmap" not in str(e):
                raise
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
def infer_vae_config(sd: dict[str, Any]) -> VAEConfig:
    """VAEConfig from LDM autoencoder tensor shapes."""
    try:
        ch = sd["encoder.conv_in.weight"].shape[0]
        levels = count_indices(sd, r"encoder\.down\.(\d+)\.")
        mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
        return VAEConfig(ch=ch, ch_mult=mult, num_res_blocks=count_indices(sd, r"encoder\.down\.0\.block\.(\d+)\."),
                         z_channels=sd["decoder.conv_in.weight"].shape[1],
                         in_channels=sd["encoder.conv_in.weight"].shape[1],
                         out_ch=sd["decoder.conv_out.weight"].shape[0], quant_conv="quant_conv.weight" in sd)
    except KeyError as e:
        raise ModelError(f"VAE weights are incomplete (missing {e.args[0]}); re-download the file") from None


def infer_clip_config(sd: dict[str, Any], activation: str, heads: int | None = None) -> CLIPConfig:
    """CLIPConfig from HF-layout CLIP tensor shapes."""
    tok = sd["text_model.embeddings.token_embedding.weight"]
    proj = sd.get("text_projection.weight")
    return CLIPConfig(
        vocab_size=tok.shape[0], width=tok.shape[1],
        layers=count_indices(sd, r"text_model\.encoder\.layers\.(\d+)\."), heads=heads or _heads_for(tok.shape[1]),
        max_positions=sd["text_model.embeddings.position_embedding.weight"].shape[0],
        intermediate=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        projection_dim=None if proj is None else proj.shape[0], activation=activation)


# -- building ---------------------------------------------------------------------------------------------------
def place_tensor(t: torch.Tensor, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`t` on `device` in `dtype`, except fp8 tensors and 0-d scales, which keep their dtype (see fp8.module_to)."""
    from .fp8 import is_fp8

    keep = dtype is None or not t.is_floating_point() or is_fp8(t) or t.ndim == 0
    return t.to(device=device, dtype=None if keep else dtype)


def _load_module(module_fn, sd: dict[str, Any], what: str, path: Path, device: Any = None,
                 dtype: torch.dtype | None = None) -> nn.Module:
    """Build on the meta device (no random init) and assign the file's tensors; mismatches -> ModelError.

    With `device`/`dtype` each tensor is converted as it is taken and its entry in `sd` replaced, so the
    original (a memory-mapped file page) is released as the conversion goes, never a whole second copy.
    """
    with torch.device("meta"):
        module = module_fn()
    if device is not None or dtype is not None:
        for key in list(sd):
            sd[key] = place_tensor(sd[key], device, dtype)
    result = module.load_state_dict(sd, strict=False, assign=True)
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        raise ModelError(f"{path}: the {what} weights do not fit the architecture read off their shapes "
                         f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                         f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''}); the file may be damaged")
    return module


#: How ComfyUI reads each UNet family's text encoders: the slots (layer, final norm, pad token) and the pooled one.
_CLIP_SLOTS: dict[str, tuple[list[ClipSlot], str]] = {
    "sd1": ([ClipSlot("clip_l")], "clip_l"),
    "sd2": ([ClipSlot("clip_h", layer_idx=-2, pad_token=0)], "clip_h"),
    "sdxl": ([ClipSlot("clip_l", -2, False, EOS), ClipSlot("clip_g", -2, False, 0)], "clip_g"),
    "sdxl_refiner": ([ClipSlot("clip_g", -2, False, 0)], "clip_g"),
}


def _text_encoder(parts: dict[str, dict[str, Any]], family: ModelFamily, path: Path, heads: dict[str, int],
                  activations: dict[str, str], embeddings_dir, device: torch.device,
                  dtype: torch.dtype) -> TextEncoder:
    clips = {}
    for name in family.text_encoders:
        sd = parts.get(name)
        if not sd:
            raise ModelError(f"{path}: no {name} text encoder weights found; this {family.name} checkpoint is "
                             "incomplete (load a full checkpoint, or a separate CLIP file)")
        default_act = "quick_gelu" if name == "clip_l" else "gelu"
        try:
            cfg = infer_clip_config(sd, activations.get(name, default_act), heads.get(name))
        except KeyError as e:
            raise ModelError(f"{path}: the {name} text encoder weights are incomplete (missing {e.args[0]}); "
                             "re-download the file") from None
        clips[name] = _load_module(lambda cfg=cfg: CLIPTextModel(cfg), sd, name, path, device, dtype)
        parts.pop(name)
    slots, pooled = _CLIP_SLOTS[family.name]
    return TextEncoder(clips, slots, pooled, embeddings_dir, name=path.name)


#: The loaders that take a diffusion model's pieces when they come as separate files
_SPLIT_LOADERS = {"flux": "UNETLoader (models/diffusion_models) + DualCLIPLoader type flux (clip_l + t5xxl in "
                          "models/text_encoders) + VAELoader (ae.safetensors in models/vae)",
                  "sd3": "UNETLoader (models/diffusion_models) + TripleCLIPLoader (clip_l, clip_g, t5xxl) + VAELoader"}


def _check_complete(path: Path, family: ModelFamily, parts: dict[str, dict[str, Any]]) -> None:
    """A ModelError naming what a checkpoint lacks and which loaders take the pieces instead."""
    split = _SPLIT_LOADERS.get(family.name)
    if split and not parts["vae"]:
        missing = [n for n in family.text_encoders if n not in parts] + ["vae"]
        raise ModelError(f"{path}: a bare {family.name} diffusion model (no {', '.join(missing)} weights), so "
                         f"CheckpointLoaderSimple cannot load it; put it in models/diffusion_models and load it with "
                         f"{split}")
    if not parts["vae"]:
        raise ModelError(f"{path}: has a {family.name} diffusion model but no VAE weights (first_stage_model.*); "
                         "load the VAE separately with load_vae() / VAELoader")


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
                    embeddings_dir: str | Path | None = None, load_device: Any = None,
                    text_encoder_dtype: torch.dtype | None = None,
                    vae_dtype: torch.dtype | None = None) -> tuple[DiffusionModel, TextEncoder, VAE]:
    """Load an SD1.x / SD2.x / SDXL checkpoint (file or diffusers folder) -> (DiffusionModel, TextEncoder, VAE).

    The file is memory-mapped and each part is taken out of it as it is built, so host RAM holds at most one
    copy of the weights (in the dtype they end up in). Dtypes are chosen for `device` (``precision.precision_for``;
    `dtype`, `text_encoder_dtype` and `vae_dtype` override them); `load_device` (default `device`) is where the
    weights go now, e.g. "cpu" for a model that will be placed on the GPU when it runs.

    >>> model, clip, vae = load_checkpoint("models/checkpoints/comfykit-demo-sd15.safetensors")
    """
    path = Path(path)
    device = torch.device(device or "cpu")
    target = torch.device(load_device) if load_device is not None else device
    heads: dict[str, int] = {}
    acts: dict[str, str] = {}
    unet_heads = None
    if path.is_dir():
        parts, sched, heads, extra = _diffusers_folder(path)
        acts, unet_heads = extra["acts"], extra["unet_heads"]
        names: dict[str, Any] = {"v_pred": 1} if sched.get("prediction_type") == "v_prediction" else {}
    else:
        full = read_state_dict(path)
        parts = keys.split_checkpoint(full)
        if not parts["unet"]:
            raise _unknown(path, full)
        names = dict.fromkeys(full)  # the marker keys the families read; the tensors live on in `parts` only
        del full
    family = detect_family(parts)
    if family is None:
        raise _unknown(path, names)
    _check_complete(path, family, parts)
    precision = precision_for(device, dtype, text_encoder_dtype, vae_dtype)
    unet_dtype, te_dtype = family.compute_dtype(precision), precision.text_encoder
    try:
        net_sd = family.convert(parts["unet"], unet_dtype)
        config = family.config(net_sd, parts)
        vcfg = infer_vae_config(parts["vae"])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ModelError(f"{path}: the {family.name} diffusion model or VAE weights are incomplete ({e!r}); "
                         "re-download the file") from None
    if unet_heads is not None and family.name == "sd1":  # diffusers folders name their head count
        config.num_heads = unet_heads if isinstance(unet_heads, int) else unet_heads[0]
    sampling = family.model_sampling(config, names, parts)
    parts["unet"] = {}  # net_sd is the only holder now: each tensor is released as it is placed
    network = _build_network(family, config, net_sd, path, target, unet_dtype)
    del net_sd
    vae = _load_module(lambda: AutoencoderKL(vcfg), parts.pop("vae"), "VAE", path, target, precision.vae)
    if family.name not in _CLIP_SLOTS and not any(k in parts for k in family.text_encoders):
        te = None  # ComfyUI's SD3.5 single files carry no text encoders: a CLIP loader gives them, CLIP is None
    elif family.name in _CLIP_SLOTS:
        te = _text_encoder(parts, family, path, heads, acts, embeddings_dir, target, te_dtype)
    else:
        from .text_encoder_files import build_text_encoder

        context = config.get("joint_attention_dim") if family.name == "sd3" else None
        te = build_text_encoder(family.name, {k: parts.pop(k) for k in family.text_encoders if k in parts},
                                name=path.name, device=device, load_device=target, dtype=text_encoder_dtype,
                                embeddings_dir=embeddings_dir, context_dim=context)
    model = DiffusionModel(network, family, config, sampling, name=path.name)
    return model, te, VAE(vae.eval(), name=path.name)


def _build_network(family: ModelFamily, config: Any, sd: dict[str, Any], path: Path, device: torch.device,
                   dtype: torch.dtype, weight_dtype: torch.dtype | None = None) -> nn.Module:
    """The family's network filled with ``sd`` on ``device`` (emptying ``sd``): fp8-stored weights stay fp8 (upcast
    per layer to ``dtype``, times their ``scale_weight`` in scaled-fp8 files), and ``weight_dtype`` (an fp8 type)
    stores the others that way too, as UNETLoader's option does."""
    from . import fp8

    scales = fp8.pop_scales(sd)
    has_fp8 = bool(scales) or any(fp8.is_fp8(v) for v in sd.values())
    network = _load_module(lambda: family.build(config), sd, "diffusion model", path, device, dtype)
    sd.clear()
    if has_fp8:
        fp8.apply_fp8(network, scales, compute_dtype=dtype)
    fp8.module_to(network, device, dtype)
    if weight_dtype is not None:
        fp8.quantize_fp8(network, weight_dtype, compute_dtype=dtype)
    return network.eval()


#: UNETLoader's weight_dtype names -> torch storage dtypes
WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
                 "fp8_e5m2": torch.float8_e5m2}


def load_diffusion_model(path: str | Path, *, device: Any = None, dtype: torch.dtype | None = None,
                         weight_dtype: str = "default", load_device: Any = None) -> DiffusionModel:
    """A diffusion model file on its own (UNETLoader): FLUX.1 / SD3.5 transformers, SD1/SD2/SDXL UNets.

    fp8 files stay fp8 in memory (scaled-fp8 ones with their scales) and are upcast one layer at a time.
    Dtypes are chosen for `device`; `load_device` (default `device`) is where the weights go now.

    >>> model = load_diffusion_model("models/diffusion_models/flux1-schnell.safetensors", weight_dtype="fp8_e4m3fn")
    """
    path = Path(path)
    device = torch.device(device or "cpu")
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype={weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    if path.is_dir():
        from .dit_common import read_transformer

        full, _ = read_transformer(path)
    else:
        full = read_state_dict(path)
    unet = {k[len(keys.UNET_PREFIX):]: v for k, v in full.items() if k.startswith(keys.UNET_PREFIX)} or full
    parts = {"unet": unet, "vae": {}}
    family = detect_family(parts)
    if family is None:
        from .text_encoder_files import describe

        raise ModelError(f"{path}: not a diffusion model this engine knows: it looks like {describe(full)}")
    names = dict.fromkeys(full)
    del full
    compute = family.compute_dtype(precision_for(device, dtype))
    try:
        net_sd = family.convert(unet, compute)
        config = family.config(net_sd, parts)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ModelError(f"{path}: the {family.name} diffusion model weights are incomplete ({e!r}); "
                         "re-download the file") from None
    sampling = family.model_sampling(config, names, parts)
    del unet
    parts["unet"] = {}
    target = torch.device(load_device) if load_device is not None else device
    network = _build_network(family, config, net_sd, path, target, compute, WEIGHT_DTYPES[weight_dtype])
    return DiffusionModel(network, family, config, sampling, name=path.name)


def load_vae(path: str | Path, *, device: Any = None, dtype: torch.dtype | None = None) -> VAE:
    """A standalone VAE file (LDM keys with or without `first_stage_model.`, or diffusers keys) -> VAE."""
    path = Path(path)
    sd = keys.vae_state_dict(read_state_dict(path))
    if "decoder.conv_in.weight" not in sd:
        raise ModelError(f"{path}: no VAE decoder weights found; is this a VAE file (models/vae)?")
    device = torch.device(device or "cpu")
    vae_dtype = precision_for(device, vae=dtype).vae
    module = _load_module(lambda: AutoencoderKL(infer_vae_config(sd)), sd, "VAE", path, device, vae_dtype)
    return VAE(module.eval(), name=path.name)
