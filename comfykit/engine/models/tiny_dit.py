"""Tiny random-weight FLUX.1 / SD3.5 transformers and 16-channel VAEs, written in the layouts users download.

For tests and demos only: the inverse key mappings below (diffusers -> BFL / Stability) exist so tiny files can be
written in the original layouts; loading goes through diffusers' own forward converters, which the tests use to
check these inverses (inverse, then forward, gives back the original tensors exactly).

>>> write_flux_file("flux1-tiny-dev.safetensors", guidance=True)            # BFL layout, bare keys
>>> sd = flux_pieces(guidance=False) | vae16_pieces("vae.")                  # ComfyUI all-in-one pieces
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import keys

# -- tiny diffusers models --------------------------------------------------------------------------------------
TINY_FLUX = {"num_layers": 1, "num_single_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2,
             "joint_attention_dim": 32, "pooled_projection_dim": 24, "axes_dims_rope": (4, 6, 6)}
TINY_SD3 = {"patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 2, "attention_head_dim": 8,
            "num_attention_heads": 4, "joint_attention_dim": 32, "caption_projection_dim": 32,
            "pooled_projection_dim": 24, "pos_embed_max_size": 16, "sample_size": 128}


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Re-draw every weight from a seeded generator (norm weights near 1, the rest small), so each one matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight") and p.ndim == 1:
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(noise * (0.3 / max(1, p.shape[-1]) ** 0.5 if p.ndim > 1 else 0.05))
    return module.eval()


def tiny_flux(guidance: bool = False, in_channels: int = 64, seed: int = 0, **overrides: Any) -> nn.Module:
    """A random `FluxTransformer2DModel` of a few hundred kB: schnell-like, dev-like (`guidance=True`), or Fill-like."""
    from diffusers import FluxTransformer2DModel

    cfg = {**TINY_FLUX, "in_channels": in_channels, "out_channels": 64, "guidance_embeds": guidance, **overrides}
    return randomize(FluxTransformer2DModel(patch_size=1, **cfg), seed)


def tiny_sd3(dual: tuple[int, ...] = (0,), qk_norm: str | None = "rms_norm", seed: int = 0,
             **overrides: Any) -> nn.Module:
    """A random `SD3Transformer2DModel` of a few hundred kB; defaults are SD3.5-medium-like (dual attention, qk norm)."""
    from diffusers import SD3Transformer2DModel

    cfg = {**TINY_SD3, "dual_attention_layers": dual, "qk_norm": qk_norm, **overrides}
    return randomize(SD3Transformer2DModel(**cfg), seed)


def tiny_vae16(seed: int = 0) -> nn.Module:
    """A random 16-channel diffusers `AutoencoderKL` without quant convs (the FLUX.1/SD3 VAE shape, tiny; 32 norm
    groups, as every released VAE and as comfykit and ComfyUI read them)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=[32, 32], layers_per_block=1, latent_channels=16, norm_num_groups=32,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        use_quant_conv=False, use_post_quant_conv=False)
    return randomize(vae, seed)


# -- inverse key mappings (diffusers -> original layouts) -------------------------------------------------------
def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(scale, shift) <-> (shift, scale): the final AdaLN order differs between diffusers and the originals."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _mlp_embedder(out: dict, sd: dict, src: str, dst: str, names: tuple[str, str]) -> None:
    for a, b in (("linear_1", names[0]), ("linear_2", names[1])):
        for kind in ("weight", "bias"):
            out[f"{dst}.{b}.{kind}"] = sd[f"{src}.{a}.{kind}"]


def flux_diffusers_to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `FluxTransformer2DModel` keys -> Black Forest Labs' original names (as in flux1-dev.safetensors)."""
    out: dict[str, torch.Tensor] = {}
    tte = "time_text_embed."
    _mlp_embedder(out, sd, tte + "timestep_embedder", "time_in", ("in_layer", "out_layer"))
    _mlp_embedder(out, sd, tte + "text_embedder", "vector_in", ("in_layer", "out_layer"))
    if tte + "guidance_embedder.linear_1.weight" in sd:
        _mlp_embedder(out, sd, tte + "guidance_embedder", "guidance_in", ("in_layer", "out_layer"))
    for kind in ("weight", "bias"):
        out[f"txt_in.{kind}"] = sd[f"context_embedder.{kind}"]
        out[f"img_in.{kind}"] = sd[f"x_embedder.{kind}"]
        out[f"final_layer.linear.{kind}"] = sd[f"proj_out.{kind}"]
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(sd[f"norm_out.linear.{kind}"])
    for i in range(_count(sd, "transformer_blocks")):
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{b}img_mod.lin.{kind}"] = sd[f"{d}norm1.linear.{kind}"]
            out[f"{b}txt_mod.lin.{kind}"] = sd[f"{d}norm1_context.linear.{kind}"]
            out[f"{b}img_attn.qkv.{kind}"] = torch.cat([sd[f"{d}attn.to_{p}.{kind}"] for p in "qkv"])
            out[f"{b}txt_attn.qkv.{kind}"] = torch.cat([sd[f"{d}attn.add_{p}_proj.{kind}"] for p in "qkv"])
            out[f"{b}img_attn.proj.{kind}"] = sd[f"{d}attn.to_out.0.{kind}"]
            out[f"{b}txt_attn.proj.{kind}"] = sd[f"{d}attn.to_add_out.{kind}"]
            out[f"{b}img_mlp.0.{kind}"] = sd[f"{d}ff.net.0.proj.{kind}"]
            out[f"{b}img_mlp.2.{kind}"] = sd[f"{d}ff.net.2.{kind}"]
            out[f"{b}txt_mlp.0.{kind}"] = sd[f"{d}ff_context.net.0.proj.{kind}"]
            out[f"{b}txt_mlp.2.{kind}"] = sd[f"{d}ff_context.net.2.{kind}"]
        out[f"{b}img_attn.norm.query_norm.scale"] = sd[f"{d}attn.norm_q.weight"]
        out[f"{b}img_attn.norm.key_norm.scale"] = sd[f"{d}attn.norm_k.weight"]
        out[f"{b}txt_attn.norm.query_norm.scale"] = sd[f"{d}attn.norm_added_q.weight"]
        out[f"{b}txt_attn.norm.key_norm.scale"] = sd[f"{d}attn.norm_added_k.weight"]
    for i in range(_count(sd, "single_transformer_blocks")):
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{b}modulation.lin.{kind}"] = sd[f"{d}norm.linear.{kind}"]
            out[f"{b}linear1.{kind}"] = torch.cat([sd[f"{d}attn.to_{p}.{kind}"] for p in "qkv"]
                                                  + [sd[f"{d}proj_mlp.{kind}"]])
            out[f"{b}linear2.{kind}"] = sd[f"{d}proj_out.{kind}"]
        out[f"{b}norm.query_norm.scale"] = sd[f"{d}attn.norm_q.weight"]
        out[f"{b}norm.key_norm.scale"] = sd[f"{d}attn.norm_k.weight"]
    return out


def sd3_diffusers_to_sai(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `SD3Transformer2DModel` keys -> Stability's MMDiT names (as in sd3.5_medium.safetensors)."""
    out: dict[str, torch.Tensor] = {"pos_embed": sd["pos_embed.pos_embed"]}
    tte = "time_text_embed."
    _mlp_embedder(out, sd, tte + "timestep_embedder", "t_embedder", ("mlp.0", "mlp.2"))
    _mlp_embedder(out, sd, tte + "text_embedder", "y_embedder", ("mlp.0", "mlp.2"))
    for kind in ("weight", "bias"):
        out[f"x_embedder.proj.{kind}"] = sd[f"pos_embed.proj.{kind}"]
        out[f"context_embedder.{kind}"] = sd[f"context_embedder.{kind}"]
        out[f"final_layer.linear.{kind}"] = sd[f"proj_out.{kind}"]
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(sd[f"norm_out.linear.{kind}"])
    layers = _count(sd, "transformer_blocks")
    for i in range(layers):
        d, x, c = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        last = i == layers - 1  # the last block's context stream only feeds attention (context_pre_only)
        for kind in ("weight", "bias"):
            out[f"{x}attn.qkv.{kind}"] = torch.cat([sd[f"{d}attn.to_{p}.{kind}"] for p in "qkv"])
            out[f"{c}attn.qkv.{kind}"] = torch.cat([sd[f"{d}attn.add_{p}_proj.{kind}"] for p in "qkv"])
            out[f"{x}attn.proj.{kind}"] = sd[f"{d}attn.to_out.0.{kind}"]
            out[f"{x}adaLN_modulation.1.{kind}"] = sd[f"{d}norm1.linear.{kind}"]
            ctx_mod = sd[f"{d}norm1_context.linear.{kind}"]
            out[f"{c}adaLN_modulation.1.{kind}"] = _swap_halves(ctx_mod) if last else ctx_mod
            out[f"{x}mlp.fc1.{kind}"] = sd[f"{d}ff.net.0.proj.{kind}"]
            out[f"{x}mlp.fc2.{kind}"] = sd[f"{d}ff.net.2.{kind}"]
            if not last:
                out[f"{c}attn.proj.{kind}"] = sd[f"{d}attn.to_add_out.{kind}"]
                out[f"{c}mlp.fc1.{kind}"] = sd[f"{d}ff_context.net.0.proj.{kind}"]
                out[f"{c}mlp.fc2.{kind}"] = sd[f"{d}ff_context.net.2.{kind}"]
            if f"{d}attn2.to_q.weight" in sd:
                out[f"{x}attn2.qkv.{kind}"] = torch.cat([sd[f"{d}attn2.to_{p}.{kind}"] for p in "qkv"])
                out[f"{x}attn2.proj.{kind}"] = sd[f"{d}attn2.to_out.0.{kind}"]
        if f"{d}attn.norm_q.weight" in sd:
            out[f"{x}attn.ln_q.weight"] = sd[f"{d}attn.norm_q.weight"]
            out[f"{x}attn.ln_k.weight"] = sd[f"{d}attn.norm_k.weight"]
            out[f"{c}attn.ln_q.weight"] = sd[f"{d}attn.norm_added_q.weight"]
            out[f"{c}attn.ln_k.weight"] = sd[f"{d}attn.norm_added_k.weight"]
            if f"{d}attn2.norm_q.weight" in sd:
                out[f"{x}attn2.ln_q.weight"] = sd[f"{d}attn2.norm_q.weight"]
                out[f"{x}attn2.ln_k.weight"] = sd[f"{d}attn2.norm_k.weight"]
    return out


def _count(sd: dict[str, Any], stem: str) -> int:
    from .dit_common import count_blocks

    return count_blocks(sd, stem)


# -- pieces and files -------------------------------------------------------------------------------------------
def _contiguous(sd: dict[str, torch.Tensor], prefix: str = "",
                dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    return {prefix + k: (v.to(dtype) if dtype else v).contiguous() for k, v in sd.items()}


def flux_pieces(guidance: bool = False, prefix: str = "model.diffusion_model.", seed: int = 0,
                dtype: torch.dtype | None = None, **overrides: Any) -> dict[str, torch.Tensor]:
    """A tiny FLUX.1 transformer in BFL layout under `prefix` (ComfyUI all-in-one: 'model.diffusion_model.')."""
    return _contiguous(flux_diffusers_to_bfl(tiny_flux(guidance, seed=seed, **overrides).state_dict()), prefix, dtype)


def sd3_pieces(prefix: str = "model.diffusion_model.", seed: int = 0, dtype: torch.dtype | None = None,
               **overrides: Any) -> dict[str, torch.Tensor]:
    """A tiny SD3.5 MMDiT in Stability's layout under `prefix` (Stability's and ComfyUI's single files use it)."""
    return _contiguous(sd3_diffusers_to_sai(tiny_sd3(seed=seed, **overrides).state_dict()), prefix, dtype)


def vae16_pieces(prefix: str = "vae.", seed: int = 0, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A tiny 16-channel VAE in LDM layout (no quant_conv) under `prefix`: 'vae.' (FLUX.1 all-in-one),
    'first_stage_model.' (SD3.5 single files) or '' (BFL's ae.safetensors)."""
    return _contiguous(keys.vae_diffusers_to_ldm(tiny_vae16(seed).state_dict()), prefix, dtype)


def _save(sd: dict[str, torch.Tensor], path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def write_flux_file(path: str | Path, guidance: bool = False, prefix: str = "", seed: int = 0,
                    dtype: torch.dtype | None = None, **overrides: Any) -> Path:
    """A tiny flux1-*.safetensors in BFL layout: schnell-like, or dev-like with `guidance=True`."""
    return _save(flux_pieces(guidance, prefix, seed, dtype, **overrides), path)


def write_sd3_file(path: str | Path, prefix: str = "model.diffusion_model.", with_vae: bool = True, seed: int = 0,
                   dtype: torch.dtype | None = None, **overrides: Any) -> Path:
    """A tiny sd3.5_*.safetensors as Stability ships it: MMDiT under `model.diffusion_model.`, VAE under
    `first_stage_model.` (text encoders are separate files)."""
    sd = sd3_pieces(prefix, seed, dtype, **overrides)
    if with_vae:
        sd |= vae16_pieces("first_stage_model.", seed + 1, dtype)
    return _save(sd, path)


def write_ae_file(path: str | Path, seed: int = 0, dtype: torch.dtype | None = None) -> Path:
    """A tiny ae.safetensors as BFL ships it: bare LDM keys, 16 latent channels, no quant convs."""
    return _save(vae16_pieces("", seed, dtype), path)


def write_diffusers_folder(folder: str | Path, model: nn.Module, subfolder: str = "transformer") -> Path:
    """`model.save_pretrained(folder/subfolder)`: a diffusers pipeline folder's transformer (or vae) part."""
    target = Path(folder) / subfolder if subfolder else Path(folder)
    model.save_pretrained(str(target))
    return Path(folder)
