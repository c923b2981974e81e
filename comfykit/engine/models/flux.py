"""FLUX.1 transformers (schnell, dev, Krea, Kontext, Fill/Canny/Depth) on diffusers' `FluxTransformer2DModel`.

Loading: detect the layout (BFL original or diffusers), convert BFL keys with diffusers' own converter, read the
config off the tensor shapes (no hub access), build on the meta device and assign the file's tensors.
`FluxModel` then gives the network ComfyUI's model contract (see `FluxModel.forward`).

>>> model = load_flux("models/diffusion_models/flux1-schnell.safetensors")
>>> out = model(x, sigma, context, pooled)          # what ComfyUI's Flux returns: denoised = x - out * sigma
"""

from __future__ import annotations

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
from .family import resize_to_batch
from .precision import precision_for

LATENT_CHANNELS = 16
PATCH = 2
REF_METHODS = ("offset", "index", "uxo")


# -- keys -------------------------------------------------------------------------------------------------------
def flux_to_diffusers(sd: dict[str, Any], *, consume: bool = False) -> dict[str, Any]:
    """BFL-layout FLUX.1 keys (prefix stripped) -> diffusers `FluxTransformer2DModel` keys.

    Calls diffusers' `convert_flux_transformer_checkpoint_to_diffusers`. That converter splits each single block's
    fused `linear1` (q, k, v, mlp) with sizes fixed to the released models' width 3072; so it gets a stand-in of that
    size on the meta device, and the real tensor is split here with the same q, k, v, mlp order at the file's own
    width. With `consume=True` the keys are popped from `sd`, so a large model is not held twice.
    """
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    work = sd if consume else dict(sd)
    inner = work["img_in.weight"].shape[0]
    singles = {}
    for i in range(count_blocks(work, "single_blocks")):
        for kind in ("weight", "bias"):
            key = f"single_blocks.{i}.linear1.{kind}"
            if key not in work:
                raise KeyError(key)
            fused = work.pop(key)
            singles[(i, kind)] = fused
            stand_in = (3072 * 7,) + tuple(fused.shape[1:])  # 3 x 3072 (q, k, v) + 4 x 3072 (mlp)
            work[key] = torch.empty(stand_in, device="meta")
    out = convert_flux_transformer_checkpoint_to_diffusers(work)
    if work:  # the converter pops every key it knows
        raise KeyError(f"unknown keys {list(work)[:3]}")
    for (i, kind), fused in singles.items():
        mlp = fused.shape[0] - 3 * inner
        q, k, v, m = torch.split(fused, [inner, inner, inner, mlp], dim=0)
        base = f"single_transformer_blocks.{i}."
        out[base + f"attn.to_q.{kind}"] = q
        out[base + f"attn.to_k.{kind}"] = k
        out[base + f"attn.to_v.{kind}"] = v
        out[base + f"proj_mlp.{kind}"] = m
    return out


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE axes (index, row, column) for a head width: (16, 56, 56) at FLUX.1's 128, scaled alike for tiny models.

    The axes have no weights, so a file cannot say them. Rows and columns get 7/16 of the width each (rounded down
    to even, as rotary pairs need), the index axis the rest: 128 -> (16, 56, 56), 32 -> (4, 14, 14), 16 -> (4, 6, 6).
    """
    side = (head_dim * 7 // 16) // 2 * 2
    return (head_dim - 2 * side, side, side)


def infer_flux_config(sd: dict[str, Any]) -> dict[str, Any]:
    """`FluxTransformer2DModel` kwargs from diffusers-layout tensor shapes.

    The head width is the size of the per-head q/k RMS-norm weight (`attn.norm_q.weight`, 128 in FLUX.1), so the head
    count is the model width divided by it. `guidance_embeds` is the presence of the guidance embedder (dev and its
    derivatives; schnell has none). `in_channels` is 64 (16 latent channels x 2x2 patch) for plain models and more
    for Fill (384) and Canny/Depth (128), whose extra channels are concatenated to the latent.
    """
    return {**flux_trunk_config(sd), "patch_size": 1, "out_channels": sd["proj_out.weight"].shape[0]}


def flux_trunk_config(sd: dict[str, Any]) -> dict[str, Any]:
    """The kwargs `FluxTransformer2DModel` and `FluxControlNetModel` share, from diffusers-layout tensor shapes."""
    inner, in_channels = sd["x_embedder.weight"].shape
    head_dim = sd["transformer_blocks.0.attn.norm_q.weight"].shape[0]
    if inner % head_dim:
        raise ValueError(f"width {inner} is not a multiple of the head width {head_dim}")
    return {
        "in_channels": in_channels,
        "num_layers": count_blocks(sd, "transformer_blocks"),
        "num_single_layers": count_blocks(sd, "single_transformer_blocks"),
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": sd["context_embedder.weight"].shape[1],
        "pooled_projection_dim": sd["time_text_embed.text_embedder.linear_1.weight"].shape[1],
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in sd,
        "axes_dims_rope": rope_axes(head_dim),
    }


def flux_transformer_from_state_dict(sd: dict[str, Any], *, name: str = "flux", folder_config: dict | None = None,
                                     consume: bool = False, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A `FluxTransformer2DModel` holding the tensors of a BFL or diffusers-layout state dict (any prefix)."""
    from diffusers import FluxTransformer2DModel

    found = find_layout(sd)
    if found is None or not found[0].startswith("flux"):
        raise ModelError(f"{name}: no FLUX.1 transformer keys found; this looks like {_what(found, sd)}")
    layout, prefix = found
    dm = dequantize_scaled_fp8(strip_prefix(sd, prefix, consume=consume), dtype)
    try:
        if layout == "flux-bfl":
            dm = flux_to_diffusers(dm, consume=True)  # dm is our own dict here
        cfg = infer_flux_config(dm)
    except (KeyError, IndexError, ValueError) as e:
        raise ModelError(f"{name}: the FLUX.1 transformer weights are incomplete or inconsistent ({e}); "
                         "re-download the file") from None
    cfg = config_from_folder(cfg, folder_config or {})
    return build_on_meta(lambda: FluxTransformer2DModel(**cfg), dm, "FLUX.1 transformer", name)


def _what(found: tuple[str, str] | None, sd: dict[str, Any]) -> str:
    if found and found[0].startswith("sd3"):
        return "an SD3/SD3.5 MMDiT (load it with load_sd3)"
    return describe(sd)


def load_flux(source: str | Path | dict[str, Any], *, device: Any = None, dtype: torch.dtype | None = None,
              name: str | None = None, consume: bool = False) -> FluxModel:
    """A FLUX.1 transformer from a file (BFL, diffusers or ComfyUI all-in-one), a diffusers folder or a state dict.

    dtype defaults to the device's (``precision.precision_for``); tensors stored otherwise (fp16, fp8, scaled fp8) are
    cast to it. A state dict is left as it is unless `consume=True`, which pops the diffusion-model keys as they
    are used (the rest of an all-in-one checkpoint, e.g. its VAE, stays).
    """
    device = torch.device(device or "cpu")
    dtype = precision_for(device, dtype).dit
    sd, folder_cfg, label, owned = open_source(source, name)
    module = flux_transformer_from_state_dict(sd, name=label, folder_config=folder_cfg, consume=owned or consume,
                                             dtype=dtype)
    return FluxModel(place(module, device, dtype), name=Path(label).name)


# -- ComfyUI's model contract -----------------------------------------------------------------------------------
def pack(x: torch.Tensor, index: float = 0, h_offset: int = 0, w_offset: int = 0,
         ids_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """[B,C,h,w] -> 2x2-patch tokens [B, ceil(h/2)*ceil(w/2), 4C] and their (index, row, col) ids [N,3].

    h, w are padded circularly to even sizes first; offsets are in latent pixels and become patch units
    (rounded half up), as in ComfyUI's `Flux.process_img`.
    """
    b, c, h, w = x.shape
    x = pad_to_patch(x, PATCH)
    hp, wp = x.shape[-2] // PATCH, x.shape[-1] // PATCH
    tokens = x.reshape(b, c, hp, PATCH, wp, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(b, hp * wp, c * PATCH * PATCH)
    h_off, w_off = (h_offset + PATCH // 2) // PATCH, (w_offset + PATCH // 2) // PATCH
    ids = torch.zeros(hp, wp, 3, dtype=ids_dtype, device=x.device)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(hp, device=x.device, dtype=ids_dtype)[:, None] + h_off
    ids[..., 2] = torch.arange(wp, device=x.device, dtype=ids_dtype)[None, :] + w_off
    return tokens, ids.reshape(hp * wp, 3)


def unpack(tokens: torch.Tensor, h: int, w: int, channels: int = LATENT_CHANNELS) -> torch.Tensor:
    """The inverse of `pack`: [B,N,4C] -> [B,C,h,w] (cropped back to the unpadded size)."""
    b = tokens.shape[0]
    hp, wp = (h + 1) // PATCH, (w + 1) // PATCH
    x = tokens.reshape(b, hp, wp, channels, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, hp * PATCH, wp * PATCH)[:, :, :h, :w]


def reference_ids(refs: list[torch.Tensor], h: int, w: int, method: str = "offset") -> list[tuple[float, int, int]]:
    """(index, h_offset, w_offset) of each Kontext reference latent, as ComfyUI 0.3.64 places them.

    'offset' (the default): index 1, each reference beside or below the previous ones, whichever keeps the
    canvas squarer; 'index': offsets 0, index 1, 2, ...; 'uxo': index 0, offsets past the image and the previous
    references.
    """
    method = "uxo" if method in ("uxo", "uxo/uno", "uso") else method
    if method not in REF_METHODS:
        raise ValueError(f"unknown reference latents method {method!r}; use one of {', '.join(REF_METHODS)}")
    h_len, w_len = (h + 1) // PATCH, (w + 1) // PATCH
    out, hh, ww, index = [], 0, 0, 0
    for ref in refs:
        rh, rw = ref.shape[-2], ref.shape[-1]
        if method == "index":
            index += 1
            out.append((index, 0, 0))
        elif method == "uxo":
            out.append((0, h_len * PATCH + hh, w_len * PATCH + ww))
            hh, ww = hh + rh, ww + rw
        else:
            h_off = w_off = 0
            if rh + hh > rw + ww:
                w_off = ww
            else:
                h_off = hh
            hh, ww = max(hh, rh + h_off), max(ww, rw + w_off)
            out.append((1, h_off, w_off))
    return out


class FluxModel(nn.Module):
    """A FLUX.1 diffusers transformer with ComfyUI's Flux model contract (sigma in, flow velocity out)."""

    family = "flux"
    latent_channels = LATENT_CHANNELS

    def __init__(self, transformer: nn.Module, name: str = ""):
        super().__init__()
        self.transformer = transformer
        self.name = name

    @property
    def config(self) -> Any:
        """The diffusers config of the transformer."""
        return self.transformer.config

    @property
    def guidance_embeds(self) -> bool:
        """True for guidance-distilled models (dev and derivatives), which take FluxGuidance's number."""
        return bool(self.transformer.config.guidance_embeds)

    @property
    def concat_channels(self) -> int:
        """Latent-space channels concatenated to x before packing: 0, 16 (Canny/Depth) or 80 (Fill: image + mask)."""
        return self.transformer.config.in_channels // (PATCH * PATCH) - LATENT_CHANNELS

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (inputs are cast to it); the bias, since an fp8-stored weight is not it."""
        return self.transformer.x_embedder.bias.dtype

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        from .family import module_device

        return module_device(self)  # a partial load (offload.stream) names the device itself

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor | None,
                guidance: torch.Tensor | float | None = None, concat: torch.Tensor | None = None,
                ref_latents: list[torch.Tensor] | None = None, ref_latents_method: str = "offset",
                control: dict[str, list] | None = None) -> torch.Tensor:
        """ComfyUI's Flux output [B,16,h,w] float32 for a model-space latent x [B,16,h,w] at noise level sigma [B].

        context [B,T,4096] (T5), pooled [B,768] (CLIP-L), guidance the FluxGuidance number (3.5, not x1000) or None;
        None leaves the guidance term out, as ComfyUI's Flux does (its model_base fills 3.5 when the conditioning
        has no guidance at all: do that before calling). concat holds the Fill/Canny/Depth channels; ref_latents are
        Kontext reference latents (model space), appended as extra image tokens; the output keeps the image tokens.
        control: ControlNet residuals ({"input": [per double block], "output": [per single block]}, ComfyUI's lists)
        added to the image tokens after each block.
        """
        device, dtype = self.device, self.dtype
        b, _, h, w = x.shape
        if concat is not None:
            x = torch.cat([x, concat.to(x)], dim=1)
        want = self.transformer.config.in_channels // (PATCH * PATCH)
        if x.shape[1] != want:
            extra = f" plus {want - LATENT_CHANNELS} concatenated ones" if want > LATENT_CHANNELS else ""
            raise ValueError(f"this FLUX.1 model takes {LATENT_CHANNELS} latent channels{extra}, got {x.shape[1]}")
        # ComfyUI 0.3.64 builds the position ids in the model dtype; integers up to 256 are exact even in bf16
        img, img_ids = pack(x.to(device, dtype), ids_dtype=dtype)
        n_img = img.shape[1]
        for ref, (index, h_off, w_off) in zip(ref_latents or [], reference_ids(ref_latents or [], h, w,
                                                                            ref_latents_method)):
            tokens, ids = pack(ref.to(device, dtype), index, h_off, w_off, ids_dtype=dtype)
            img = torch.cat([img, repeat_to_batch(tokens, b)], dim=1)
            img_ids = torch.cat([img_ids, ids], dim=0)
        context = context.to(device, dtype)
        txt_ids = torch.zeros(context.shape[1], 3, device=device, dtype=dtype)
        pooled_dim = self.transformer.config.pooled_projection_dim
        pooled = torch.zeros(b, pooled_dim) if pooled is None else pooled[:, :pooled_dim]
        kwargs = {"hidden_states": img, "encoder_hidden_states": context, "pooled_projections": pooled.to(device, dtype),
                  "timestep": per_sample(sigma, b, device, "sigma"), "img_ids": img_ids, "txt_ids": txt_ids,
                  "return_dict": False}
        if control:
            from .controlnet_flux import block_samples

            zeros = torch.zeros(b, img.shape[1], self.transformer.inner_dim, device=device, dtype=dtype)
            kwargs["controlnet_block_samples"] = block_samples(
                control.get("input"), len(self.transformer.transformer_blocks), zeros)
            kwargs["controlnet_single_block_samples"] = block_samples(
                control.get("output"), len(self.transformer.single_transformer_blocks), zeros)
        hook = None
        if self.guidance_embeds:
            kwargs["guidance"] = per_sample(0.0 if guidance is None else guidance, b, device, "guidance")
            if guidance is None:  # diffusers always adds the guidance term; ComfyUI leaves it out for None
                hook = self.transformer.time_text_embed.guidance_embedder.register_forward_hook(
                    lambda module, args, out: torch.zeros_like(out))
        try:
            out = self.transformer(**kwargs)[0]
        finally:
            if hook is not None:
                hook.remove()
        return unpack(out[:, :n_img], h, w, self.transformer.config.out_channels // (PATCH * PATCH)).float()

    def __repr__(self) -> str:
        c = self.transformer.config
        kind = "dev" if c.guidance_embeds else "schnell"
        width = c.num_attention_heads * c.attention_head_dim
        return (f"FluxModel({kind}, layers={c.num_layers}+{c.num_single_layers}, width={width}, in={c.in_channels}, "
                f"{self.dtype}, {self.device})")


def flux_concat(noise: torch.Tensor, in_channels: int, image: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, process_latent_in: Any = None) -> torch.Tensor | None:
    """The concat channels ComfyUI's Flux model_base builds for Canny/Depth (image) and Fill (image + 8x8 mask).

    image is a raw latent [B,16,h,w] (zeros when None), mask [B,1|C,H,W] in pixels (ones when None, i.e. repaint
    everything); `process_latent_in` maps raw latents to model space. Returns None for plain models.
    """
    from ..images import common_upscale

    channels = in_channels // (PATCH * PATCH)
    if channels <= LATENT_CHANNELS:
        return None
    b, _, h, w = noise.shape
    image = torch.zeros_like(noise) if image is None else image.to(noise)
    image = common_upscale(image, w, h, "bilinear", "center")
    image = resize_to_batch(image, b)
    if process_latent_in is not None:
        image = process_latent_in(image)
    if channels <= 2 * LATENT_CHANNELS:
        return image
    mask = torch.ones_like(noise[:, :1]) if mask is None else mask.to(noise)
    if mask.ndim == 3:
        mask = mask[:, None]
    mask = common_upscale(mask.mean(dim=1, keepdim=True), w * 8, h * 8, "bilinear", "center")
    mask = mask.reshape(mask.shape[0], h, 8, w, 8).permute(0, 2, 4, 1, 3).reshape(mask.shape[0], 64, h, w)
    return torch.cat([image, resize_to_batch(mask, b)], dim=1)


def repeat_to_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Cut or tile along the batch axis to `batch` entries (ComfyUI's repeat_to_batch_size, used for cond lists)."""
    if t.shape[0] > batch:
        return t[:batch]
    if t.shape[0] < batch:
        return t.repeat((batch + t.shape[0] - 1) // t.shape[0], *([1] * (t.ndim - 1)))[:batch]
    return t
