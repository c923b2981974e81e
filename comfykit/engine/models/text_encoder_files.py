"""Stand-alone text encoder files (CLIPLoader / DualCLIPLoader / TripleCLIPLoader) and the text encoders of
all-in-one FLUX.1 / SD3.5 checkpoints: detect what each file is, build the encoder a loader `type` asks for.

>>> clip = load_text_encoders(["clip_l.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors"], "flux")
>>> cond, pooled = clip.encode("a photo of a cat")

What a file is comes from its keys and shapes: HF or OpenCLIP CLIP towers are clip_l (768 wide), clip_g (1280) or
clip_h (1024); other widths (tiny test models) are clip_g with a `text_projection`, else clip_l. `encoder.block.N`
+ `shared.weight` is a T5. Anything else gets a ModelError that says what the file looks like and which loader
takes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import ModelError
from . import fp8, keys
from .checkpoint import _load_module, infer_clip_config, read_state_dict
from .clip import CLIPTextModel
from .flux_sd3_text import FluxTextEncoder, SD3TextEncoder
from .precision import precision_for
from .t5 import T5_PREFIXES, load_t5, t5_state_dict
from .text_encoder import ClipSlot, TextEncoder
from .tokenizer import EOS

KINDS = {"clip_l": "a CLIP-L text encoder", "clip_g": "a CLIP-G (OpenCLIP bigG) text encoder",
         "clip_h": "a CLIP-H (OpenCLIP ViT-H, SD2) text encoder", "t5xxl": "a T5-XXL text encoder"}
# which files each (loader, type) takes, and what it builds from them
SINGLE_TYPES = {"stable_diffusion": {"clip_l": "sd1", "clip_h": "sd2", "clip_g": "sdxl_refiner"},
                "sd3": {"clip_l": "sd3", "clip_g": "sd3", "t5xxl": "sd3"}}
DUAL_TYPES = {"sdxl": ("clip_l", "clip_g"), "flux": ("clip_l", "t5xxl"), "sd3": None}
_ADVICE = {"t5xxl": "a T5-XXL goes with DualCLIPLoader type 'flux' (with a clip_l) or CLIPLoader / DualCLIPLoader / "
                    "TripleCLIPLoader type 'sd3'",
           "clip_g": "a CLIP-G goes with DualCLIPLoader type 'sdxl' (with a clip_l), type 'sd3', or alone with "
                     "CLIPLoader type 'stable_diffusion' (the SDXL refiner)",
           "clip_l": "a CLIP-L goes with CLIPLoader type 'stable_diffusion' (SD1.x), DualCLIPLoader type 'flux' "
                     "(with a t5xxl) or 'sdxl' (with a clip_g), or type 'sd3'",
           "clip_h": "a CLIP-H goes with CLIPLoader type 'stable_diffusion' (SD2.x)"}


# -- what a file is ---------------------------------------------------------------------------------------------
def _clip_keys(sd: dict[str, Any]) -> dict[str, Any]:
    """One CLIP tower's keys under HF names, whatever prefix it sits under (HF, flat HF or OpenCLIP layout)."""
    anchor = next((k for k in sd if k.endswith("token_embedding.weight")), None)
    if anchor is None:
        return {}
    for tail in ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight",
                 "token_embedding.weight"):
        if anchor.endswith(tail):
            prefix = anchor[:-len(tail)]
            break
    sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return keys.openclip_to_hf(sub) if tail == "token_embedding.weight" else keys.hf_clip_keys(sub)


def _clip_kind(sd: dict[str, Any]) -> str:
    width = sd["text_model.embeddings.token_embedding.weight"].shape[1]
    by_width = {768: "clip_l", 1280: "clip_g", 1024: "clip_h"}
    return by_width.get(width, "clip_g" if "text_projection.weight" in sd else "clip_l")


def describe(sd: dict[str, Any]) -> str:
    """What a state dict looks like, as words ("a FLUX.1 diffusion model (load it with UNETLoader)", ...)."""
    names = list(sd)

    def has(*fragments: str) -> bool:
        return any(any(f in k for f in fragments) for k in names)

    if any(k.startswith("text_encoders.") for k in names) and has("diffusion_model."):
        return "an all-in-one checkpoint (diffusion model + text encoders); load it with CheckpointLoaderSimple"
    if has("double_blocks.", "single_transformer_blocks."):
        return "a FLUX.1 diffusion model; load it with UNETLoader (models/diffusion_models)"
    if has("joint_blocks.", "context_embedder.") and not has("input_blocks."):
        return "an SD3 diffusion model; load it with UNETLoader (models/diffusion_models)"
    if any(keys.lora_base_name(k) for k in names):
        return "a LoRA; load it with LoraLoader (models/loras)"
    if has("input_blocks.", "down_blocks.0.resnets."):
        full = has("first_stage_model.", "cond_stage_model.", "conditioner.")
        return ("an SD1/SD2/SDXL checkpoint; load it with CheckpointLoaderSimple (models/checkpoints)" if full
                else "a UNet; load it with UNETLoader (models/diffusion_models)")
    if has("decoder.conv_in.", "decoder.up.", "decoder.up_blocks.", "first_stage_model."):
        return "a VAE; load it with VAELoader (models/vae)"
    if has("emb_params", "string_to_param") or len(names) <= 2:
        return "a textual inversion embedding; put it in models/embeddings"
    return f"not a model comfykit knows (keys start {', '.join(names[:3])})"


def detect(sd: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(kind, state dict under our names) of a stand-alone text encoder file, or None when it is not one."""
    if any(k.startswith(("text_encoders.", "model.diffusion_model.", "first_stage_model.")) for k in sd):
        return None  # a whole checkpoint, not a stand-alone encoder
    t5 = t5_state_dict(sd)
    if "shared.weight" in t5 and any(k.startswith("encoder.block.") for k in t5):
        return "t5xxl", t5
    clip = _clip_keys(sd)
    if "text_model.embeddings.token_embedding.weight" in clip and any(".encoder.layers." in k for k in clip):
        return _clip_kind(clip), clip
    return None


def checkpoint_text_encoders(sd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"clip_l", "clip_g", "t5xxl": state dict} of an all-in-one FLUX.1 / SD3.5 checkpoint (`text_encoders.*`)."""
    parts: dict[str, dict[str, Any]] = {}
    for name in ("clip_l", "clip_g"):
        prefix = f"text_encoders.{name}."
        if any(k.startswith(prefix) for k in sd):
            parts[name] = _clip_keys({k: v for k, v in sd.items() if k.startswith(prefix)})
    if any(k.startswith(T5_PREFIXES[0]) for k in sd):
        parts["t5xxl"] = t5_state_dict({k: v for k, v in sd.items() if k.startswith(T5_PREFIXES[0])})
    return parts


# -- building ---------------------------------------------------------------------------------------------------
def build_clip(sd: dict[str, Any], kind: str, what: str, *, device: Any = None, dtype: torch.dtype | None = None,
               projection: bool = True) -> CLIPTextModel:
    """A CLIPTextModel from HF-named weights; fp8 weights are upcast (CLIP is small); `projection=False` drops it."""
    sd = {k: v for k, v in fp8.dequantize(sd).items() if projection or not k.startswith("text_projection")}
    try:
        cfg = infer_clip_config(sd, "quick_gelu" if kind == "clip_l" else "gelu")
    except KeyError as e:
        raise ModelError(f"{what}: the {kind} weights are incomplete (missing {e.args[0]}); re-download the file") \
            from None
    module = _load_module(lambda: CLIPTextModel(cfg), sd, kind, Path(what))
    return module.to(device=device, dtype=dtype).eval()


def _t5_dtype(sd: dict[str, Any], fallback: torch.dtype) -> torch.dtype:
    """ComfyUI's choice: the file's dtype unless it is wider than the text encoder dtype (T5 math is float32 anyway)."""
    stored = sd.get("encoder.final_layer_norm.weight")
    if stored is None or fp8.is_fp8(stored) or stored.element_size() > fallback.itemsize:
        return fallback
    return stored.dtype


def build_text_encoder(family: str, parts: dict[str, dict[str, Any]], *, name: str = "", device: Any = None,
                       dtype: torch.dtype | None = None, embeddings_dir: str | Path | None = None,
                       context_dim: int | None = None, load_device: Any = None) -> TextEncoder:
    """family ("sd1", "sd2", "sdxl", "sdxl_refiner", "sd3", "flux") + {kind: HF-named state dict} -> encoder.

    `dtype` is the storage dtype of non-fp8 weights (default: `device`'s, fp32 on CPU, fp16 on GPU); T5 fp8 weights
    stay fp8 and T5 weights narrower than `dtype` keep the file's dtype (its math runs in float32 either way).
    The weights go to `load_device` (default `device`), e.g. the host for an encoder placed on the GPU when used.
    """
    te_dtype = precision_for(torch.device(device or "cpu"), text_encoder=dtype).text_encoder
    device = torch.device(load_device or device or "cpu")
    clip_projection = family not in ("flux", "sd3")  # FLUX.1 and SD3 pool CLIP-L without its projection
    clips = {k: build_clip(sd, k, name or k, device=device, dtype=te_dtype,
                           projection=clip_projection or k != "clip_l")
             for k, sd in parts.items() if k.startswith("clip_")}
    t5 = None
    if "t5xxl" in parts:
        t5 = load_t5(parts["t5xxl"], name or "t5xxl", device=device, dtype=_t5_dtype(parts["t5xxl"], te_dtype))
    if family == "flux":
        return FluxTextEncoder(clips["clip_l"], t5, embeddings_dir, name)
    if family == "sd3":
        return SD3TextEncoder(clips.get("clip_l"), clips.get("clip_g"), t5, embeddings_dir, name,
                              context_dim=context_dim)
    slots = {"sd1": [ClipSlot("clip_l")], "sd2": [ClipSlot("clip_h", layer_idx=-2, pad_token=0)],
             "sdxl": [ClipSlot("clip_l", -2, False, EOS), ClipSlot("clip_g", -2, False, 0)],
             "sdxl_refiner": [ClipSlot("clip_g", -2, False, 0)]}[family]
    pooled = {"sd1": "clip_l", "sd2": "clip_h"}.get(family, "clip_g")
    return TextEncoder(clips, slots, pooled, embeddings_dir, name=name)


def _family(kinds: list[str], paths: list[Path], type: str) -> str:
    """Which encoder `type` builds from files of `kinds`, or a ModelError naming the file that does not fit."""
    n = len(kinds)
    for kind, path in zip(kinds, paths):
        if kinds.count(kind) > 1:
            raise ModelError(f"{path}: {KINDS[kind]} was given twice; the loader needs different text encoders "
                             f"({_ADVICE[kind]})")
    if n == 3:
        if sorted(kinds) != ["clip_g", "clip_l", "t5xxl"]:
            bad = next(p for k, p in zip(kinds, paths) if k == "clip_h")
            raise ModelError(f"{bad}: {KINDS['clip_h']}; TripleCLIPLoader (SD3.5) takes clip_l, clip_g and t5xxl")
        return "sd3"
    table = SINGLE_TYPES if n == 1 else DUAL_TYPES
    if type not in table:
        raise ModelError(f"{' + '.join(p.name for p in paths)}: {'CLIPLoader' if n == 1 else 'DualCLIPLoader'} type "
                         f"{type!r} is not supported by the embedded engine; supported: {', '.join(table)}")
    if n == 1:
        family = SINGLE_TYPES[type].get(kinds[0])
        if family is None:
            raise ModelError(f"{paths[0]}: {KINDS[kinds[0]]}, not one CLIPLoader type {type!r} loads; "
                             f"{_ADVICE[kinds[0]]}")
        return family
    wanted = DUAL_TYPES[type]
    if wanted is None:  # sd3: any two of clip_l, clip_g, t5xxl
        wanted = ("clip_l", "clip_g", "t5xxl")
    for kind, path in zip(kinds, paths):
        if kind not in wanted:
            raise ModelError(f"{path}: {KINDS[kind]}, but DualCLIPLoader type {type!r} takes "
                             f"{' + '.join(wanted)}; {_ADVICE[kind]}")
    return "sdxl" if type == "sdxl" else type


def load_text_encoders(paths: str | Path | list[str | Path], type: str = "stable_diffusion", *, device: Any = None,
                       dtype: torch.dtype | None = None, embeddings_dir: str | Path | None = None,
                       context_dim: int | None = None, load_device: Any = None) -> TextEncoder:
    """CLIPLoader (1 path), DualCLIPLoader (2) or TripleCLIPLoader (3, type ignored: SD3.5) -> a text encoder.

    Types: "stable_diffusion" (clip_l: SD1, clip_h: SD2, clip_g: SDXL refiner), "sdxl" (clip_l + clip_g),
    "flux" (clip_l + t5xxl), "sd3" (any of clip_l, clip_g, t5xxl).
    """
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not 1 <= len(paths) <= 3:
        raise ValueError(f"load_text_encoders takes 1 to 3 files, got {len(paths)}")
    parts: dict[str, dict[str, Any]] = {}
    kinds = []
    for path in paths:
        sd = read_state_dict(path)
        found = detect(sd)
        if found is None:
            raise ModelError(f"{path}: not a text encoder: this looks like {describe(sd)}")
        kinds.append(found[0])
        parts[found[0]] = found[1]
    family = _family(kinds, paths, type)
    name = " + ".join(p.name for p in paths)
    return build_text_encoder(family, parts, name=name, device=device, dtype=dtype, embeddings_dir=embeddings_dir,
                              context_dim=context_dim, load_device=load_device)
