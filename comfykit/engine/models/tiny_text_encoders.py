"""Tiny random text encoder files in the layouts users download: clip_l, clip_g and t5xxl, optionally fp8 / scaled fp8.

>>> write_t5xxl("models/text_encoders/t5xxl_tiny_fp8_scaled.safetensors", fp8=torch.float8_e4m3fn, scaled=True)
>>> write_clip_l("models/text_encoders/clip_l_tiny.safetensors")

Keys are the stand-alone files' (`text_model.*` + `text_projection.weight` for CLIP, `encoder.block.N.*` +
`shared.weight` for T5); `checkpoint_keys` prefixes them as all-in-one FLUX.1 / SD3.5 checkpoints do. The full
vocabularies are kept (49,408 CLIP and 32,128 T5 ids) so real prompts tokenize; everything else is a few MB.
Detection tells a tiny clip_g from a tiny clip_l by its `text_projection` (real ones by their width).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .fp8 import FP8_DTYPES, MARKER_KEY

CHECKPOINT_PREFIXES = {"clip_l": "text_encoders.clip_l.transformer.", "clip_g": "text_encoders.clip_g.transformer.",
                       "t5xxl": "text_encoders.t5xxl.transformer."}


def _clip(width: int, layers: int, projection_dim: int | None, activation: str, seed: int) -> dict[str, Any]:
    from .clip import CLIPConfig, CLIPTextModel, _heads_for

    cfg = CLIPConfig(width=width, layers=layers, heads=_heads_for(width), intermediate=2 * width,
                     projection_dim=projection_dim, activation=activation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(cfg)
        with torch.no_grad():  # norms start at 1/0: perturb them so every weight matters
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(torch.randn_like(p) * 0.05)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def clip_l_state_dict(*, width: int = 32, layers: int = 2, seed: int = 0) -> dict[str, Any]:
    """A tiny OpenAI CLIP-L text tower (quick_gelu, no projection) under HF names."""
    return _clip(width, layers, None, "quick_gelu", seed)


def clip_g_state_dict(*, width: int = 32, layers: int = 2, projection_dim: int | None = None,
                      seed: int = 1) -> dict[str, Any]:
    """A tiny OpenCLIP bigG text tower (gelu, with `text_projection`) under HF names."""
    return _clip(width, layers, projection_dim or width, "gelu", seed)


def t5xxl_state_dict(*, d_model: int = 64, num_layers: int = 2, num_heads: int = 4, d_kv: int = 16, d_ff: int = 96,
                     buckets: int = 32, vocab_size: int = 32128, gated: bool = True, seed: int = 2,
                     ) -> dict[str, Any]:
    """A tiny T5 v1.1 encoder (gated-gelu; `gated=False`: T5 v1.0 relu) under ComfyUI's / HF's names."""
    inner = num_heads * d_kv
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def norm() -> torch.Tensor:
        return 1.0 + randn(d_model, std=0.05)

    sd: dict[str, Any] = {"shared.weight": randn(vocab_size, d_model, std=1.0)}
    for i in range(num_layers):
        attn, ff = f"encoder.block.{i}.layer.0.", f"encoder.block.{i}.layer.1."
        # T5 does not scale q.k by 1/sqrt(d_kv): its q is initialised that much smaller instead
        sd[attn + "SelfAttention.q.weight"] = randn(inner, d_model, std=(d_model * d_kv) ** -0.5)
        for name in ("k", "v"):
            sd[attn + f"SelfAttention.{name}.weight"] = randn(inner, d_model, std=d_model ** -0.5)
        sd[attn + "SelfAttention.o.weight"] = randn(d_model, inner, std=inner ** -0.5)
        if i == 0:
            sd[attn + "SelfAttention.relative_attention_bias.weight"] = randn(buckets, num_heads, std=0.5)
        sd[attn + "layer_norm.weight"] = norm()
        for name in (("wi_0", "wi_1") if gated else ("wi",)):
            sd[ff + f"DenseReluDense.{name}.weight"] = randn(d_ff, d_model, std=d_model ** -0.5)
        sd[ff + "DenseReluDense.wo.weight"] = randn(d_model, d_ff, std=d_ff ** -0.5)
        sd[ff + "layer_norm.weight"] = norm()
    sd["encoder.final_layer_norm.weight"] = norm()
    return sd


def to_fp8(sd: dict[str, Any], dtype: torch.dtype = torch.float8_e4m3fn, *, scaled: bool = False,
           scale_input: bool = False) -> dict[str, Any]:
    """Linear weights (2-D, not embeddings) in fp8; `scaled`: stored as w/scale with `<layer>.scale_weight` + marker.

    `scale_input` adds a `<layer>.scale_input` of 1.0 per layer, as some scaled files carry.
    """
    if dtype not in FP8_DTYPES:
        raise ValueError(f"to_fp8: dtype must be one of {FP8_DTYPES}, got {dtype}")
    out: dict[str, Any] = {}
    limit = torch.finfo(dtype).max
    for key, value in sd.items():
        linear = value.ndim == 2 and key.endswith(".weight") and "embedding" not in key and key != "shared.weight"
        if not linear:
            out[key] = value
            continue
        layer = key[: -len(".weight")]
        if scaled:
            scale = (value.abs().max().float() / limit).clamp(min=1e-12)
            out[key] = (value.float() / scale).clamp(-limit, limit).to(dtype)
            out[layer + ".scale_weight"] = scale.reshape(())
            if scale_input:
                out[layer + ".scale_input"] = torch.ones(())
        else:
            out[key] = value.float().clamp(-limit, limit).to(dtype)
    if scaled:
        out[MARKER_KEY] = torch.empty(0, dtype=dtype)
    return out


def checkpoint_keys(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"clip_l": sd, ...} -> one dict under the all-in-one checkpoint prefixes (`text_encoders.<name>.transformer.`)."""
    return {CHECKPOINT_PREFIXES[name] + k: v for name, sd in parts.items() for k, v in sd.items()}


def _save(sd: dict[str, Any], path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return path


def write_clip_l(path: str | Path, *, fp8: torch.dtype | None = None, scaled: bool = False, **kwargs: Any) -> Path:
    """Write a tiny clip_l safetensors (kwargs: width, layers, seed); `fp8`/`scaled` store it that way."""
    sd = clip_l_state_dict(**kwargs)
    return _save(to_fp8(sd, fp8, scaled=scaled) if fp8 else sd, path)


def write_clip_g(path: str | Path, *, fp8: torch.dtype | None = None, scaled: bool = False, **kwargs: Any) -> Path:
    """Write a tiny clip_g safetensors (kwargs: width, layers, projection_dim, seed)."""
    sd = clip_g_state_dict(**kwargs)
    return _save(to_fp8(sd, fp8, scaled=scaled) if fp8 else sd, path)


def write_t5xxl(path: str | Path, *, fp8: torch.dtype | None = None, scaled: bool = False, **kwargs: Any) -> Path:
    """Write a tiny t5xxl safetensors (kwargs: see `t5xxl_state_dict`), e.g. `fp8=torch.float8_e4m3fn, scaled=True`."""
    sd = t5xxl_state_dict(**kwargs)
    return _save(to_fp8(sd, fp8, scaled=scaled) if fp8 else sd, path)
