"""SD3 / SD3.5 (medium, large) MMDiT transformers on diffusers' `SD3Transformer2DModel`.

Loading: detect the layout (Stability's single files or diffusers), convert Stability keys with diffusers' own
converter, read the config off the tensor shapes (no hub access), build on the meta device and assign the file's
tensors. `SD3Model` gives the network ComfyUI's model contract (see `SD3Model.forward`).

>>> model = load_sd3("models/checkpoints/sd3.5_medium.safetensors")
>>> out = model(x, sigma, context, pooled)          # what ComfyUI's SD3 returns: denoised = x - out * sigma
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from .dit_common import (
    build_on_meta,
    config_from_folder,
    count_blocks,
    dequantize_scaled_fp8,
    describe,
    find_layout,
    open_source,
    pad_to_patch,
    per_sample,
    place,
    strip_prefix,
)
from .precision import precision_for

LATENT_CHANNELS = 16
MMDIT_HEAD_DIM = 64  # every released MMDiT: width = 64 x depth, heads = depth
SAMPLE_SIZE = 128  # a nominal config value of every released SD3/SD3.5; the cropped position table is what counts


def sd3_to_diffusers(sd: dict[str, Any], *, consume: bool = False) -> dict[str, Any]:
    """Stability-layout MMDiT keys (prefix stripped) -> diffusers `SD3Transformer2DModel` keys.

    Calls diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`; keys it leaves behind are unknown ones.
    """
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    work = sd if consume else dict(sd)
    out = convert_sd3_transformer_checkpoint_to_diffusers(work)
    if work:
        raise KeyError(f"unknown keys {list(work)[:3]}")
    return out


def infer_sd3_config(sd: dict[str, Any]) -> dict[str, Any]:
    """`SD3Transformer2DModel` kwargs from diffusers-layout tensor shapes.

    Head width: the size of the per-head q/k RMS-norm weight where the model has one (SD3.5: `attn.norm_q.weight`),
    else 64, the MMDiT rule (width = 64 x heads) that SD3 medium follows. `dual_attention_layers` are the blocks with
    a second image self-attention (`attn2`, SD3.5 medium); `pos_embed_max_size` is the side of the square position
    table (192 for SD3/SD3.5 large, 384 for SD3.5 medium).
    """
    patch = sd["pos_embed.proj.weight"].shape[2]
    return {**sd3_trunk_config(sd), "out_channels": sd["proj_out.weight"].shape[0] // (patch * patch)}


def sd3_trunk_config(sd: dict[str, Any]) -> dict[str, Any]:
    """The kwargs `SD3Transformer2DModel` and `SD3ControlNetModel` share, from diffusers-layout tensor shapes."""
    proj = sd["pos_embed.proj.weight"]
    inner, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    norm = sd.get("transformer_blocks.0.attn.norm_q.weight")
    head_dim = norm.shape[0] if norm is not None else MMDIT_HEAD_DIM
    if inner % head_dim:
        raise ValueError(f"width {inner} is not a multiple of the head width {head_dim}")
    table = sd["pos_embed.pos_embed"].shape[1]
    side = math.isqrt(table)
    if side * side != table:
        raise ValueError(f"the position table has {table} entries, not a square number")
    layers = count_blocks(sd, "transformer_blocks")
    dual = tuple(i for i in range(layers) if f"transformer_blocks.{i}.attn2.to_q.weight" in sd)
    qk_norm = None
    if norm is not None:
        qk_norm = "layer_norm" if "transformer_blocks.0.attn.norm_q.bias" in sd else "rms_norm"
    return {
        "sample_size": SAMPLE_SIZE,
        "patch_size": patch,
        "in_channels": in_channels,
        "num_layers": layers,
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": sd["context_embedder.weight"].shape[1],
        "caption_projection_dim": sd["context_embedder.weight"].shape[0],
        "pooled_projection_dim": sd["time_text_embed.text_embedder.linear_1.weight"].shape[1],
        "pos_embed_max_size": side,
        "dual_attention_layers": dual,
        "qk_norm": qk_norm,
    }


def sd3_transformer_from_state_dict(sd: dict[str, Any], *, name: str = "sd3", folder_config: dict | None = None,
                                    consume: bool = False, dtype: torch.dtype = torch.float32) -> nn.Module:
    """An `SD3Transformer2DModel` holding the tensors of a Stability or diffusers-layout state dict (any prefix)."""
    from diffusers import SD3Transformer2DModel

    found = find_layout(sd)
    if found is None or not found[0].startswith("sd3"):
        what = "a FLUX.1 transformer (load it with load_flux)" if found else describe(sd)
        raise ModelError(f"{name}: no SD3/SD3.5 MMDiT keys found; this looks like {what}")
    layout, prefix = found
    dm = dequantize_scaled_fp8(strip_prefix(sd, prefix, consume=consume), dtype)
    try:
        if layout == "sd3-sai":
            dm = sd3_to_diffusers(dm, consume=True)
        cfg = infer_sd3_config(dm)
    except (KeyError, IndexError, ValueError) as e:
        raise ModelError(f"{name}: the SD3 transformer weights are incomplete or inconsistent ({e}); "
                         "re-download the file") from None
    cfg = config_from_folder(cfg, folder_config or {})
    return build_on_meta(lambda: SD3Transformer2DModel(**cfg), dm, "SD3 transformer", name)


def load_sd3(source: str | Path | dict[str, Any], *, device: Any = None, dtype: torch.dtype | None = None,
              name: str | None = None, consume: bool = False) -> SD3Model:
    """An SD3/SD3.5 MMDiT from a file (Stability single file, diffusers, ComfyUI), a diffusers folder or a state dict.

    dtype defaults to the device's (``precision.precision_for``); tensors stored otherwise (fp16, fp8, scaled fp8) are
    cast to it. A state dict is left as it is unless `consume=True`, which pops the diffusion-model keys as they
    are used (the rest of an all-in-one checkpoint, e.g. its VAE, stays).
    """
    device = torch.device(device or "cpu")
    dtype = precision_for(device, dtype).unet
    sd, folder_cfg, label, owned = open_source(source, name)
    module = sd3_transformer_from_state_dict(sd, name=label, folder_config=folder_cfg, consume=owned or consume,
                                            dtype=dtype)
    return SD3Model(place(module, device, dtype), name=Path(label).name)


class SD3Model(nn.Module):
    """An SD3/SD3.5 diffusers transformer with ComfyUI's SD3 model contract (sigma in, flow velocity out)."""

    family = "sd3"
    latent_channels = LATENT_CHANNELS
    guidance_embeds = False

    def __init__(self, transformer: nn.Module, name: str = ""):
        super().__init__()
        self.transformer = transformer
        self.name = name

    @property
    def config(self) -> Any:
        """The diffusers config of the transformer."""
        return self.transformer.config

    @property
    def concat_channels(self) -> int:
        """Channels concatenated to x (0 for every released SD3/SD3.5)."""
        return self.transformer.config.in_channels - LATENT_CHANNELS

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (inputs are cast to it)."""
        return self.transformer.pos_embed.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        from .family import module_device

        return module_device(self)  # a partial load (offload.stream) names the device itself

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor | None,
                guidance: Any = None, concat: torch.Tensor | None = None, ref_latents: Any = None,
                control: dict[str, list] | None = None, **_: Any) -> torch.Tensor:
        """ComfyUI's SD3 output [B,16,h,w] float32 for a model-space latent x [B,16,h,w] at noise level sigma [B].

        context [B,T,4096] (CLIP-L + CLIP-G padded, then T5), pooled [B,2048]; the timestep is sigma x 1000.
        guidance and ref_latents are ignored, as ComfyUI's SD3 ignores those conditioning entries.
        h and w are padded circularly to the patch size and the output cropped back. control: ControlNet
        residuals ({"output": [one per MMDiT block]}, ComfyUI's list) added after each block.
        """
        from .controlnet_sd3 import block_residuals, last_block_residual

        device, dtype = self.device, self.dtype
        b, _, h, w = x.shape
        if concat is not None:
            x = torch.cat([x, concat.to(x)], dim=1)
        if x.shape[1] != self.transformer.config.in_channels:
            raise ValueError(f"this SD3 model takes {self.transformer.config.in_channels} latent channels, "
                             f"got {x.shape[1]}")
        x = pad_to_patch(x.to(device, dtype), self.transformer.config.patch_size)
        side = self.transformer.config.pos_embed_max_size * self.transformer.config.patch_size
        if max(x.shape[-2:]) > side:
            raise ValueError(f"latent {h}x{w} is larger than this SD3 model's position table allows ({side}x{side}, "
                             f"{side * 8}px); generate smaller images")
        pooled_dim = self.transformer.config.pooled_projection_dim
        pooled = torch.zeros(b, pooled_dim) if pooled is None else pooled
        residuals = block_residuals(control, len(self.transformer.transformer_blocks))
        with last_block_residual(self.transformer, control):
            out = self.transformer(hidden_states=x, encoder_hidden_states=context.to(device, dtype),
                                   pooled_projections=pooled.to(device, dtype),
                                   timestep=per_sample(sigma, b, device, "sigma") * 1000,
                                   block_controlnet_hidden_states=residuals,
                                   return_dict=False)[0]
        return out[:, :, :h, :w].float()

    def __repr__(self) -> str:
        c = self.transformer.config
        return (f"SD3Model(layers={c.num_layers}, width={c.num_attention_heads * c.attention_head_dim}, "
                f"dual={len(c.dual_attention_layers)}, qk_norm={c.qk_norm}, {self.dtype}, {self.device})")
