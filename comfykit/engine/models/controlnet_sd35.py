"""Stability's own SD3.5 ControlNets (``sd3.5_large_controlnet_canny`` / ``_depth`` / ``_blur``) on diffusers'
``SD3ControlNetModel`` in its "no position table, no text stream" form.

The files (stabilityai/stable-diffusion-3.5-controlnets) hold single-stream DiT blocks in Stability's MMDiT names
(``transformer_blocks.N.attn.qkv`` ...), ``controlnet_blocks``, ``pos_embed_input``, diffusers-named time/pooled
embedders and a ``control_type`` scalar (0 blur, 1 canny, 2 depth); no patch embedding of their own.

ComfyUI 0.3.64's semantics (its ``load_controlnet_sd35`` and ``ControlNetEmbedder``), which this module follows:

- the hint is resized to the latent x the VAE's downscale, preprocessed by control type (canny: ``a * 127.5 + 0.5``,
  depth: ``1 - a``, blur: unchanged), VAE-encoded and put through SD3's latent format *with* its shift;
- the noisy latent is patch-embedded with the diffusion model's own ``x_embedder`` (borrowed at each run start),
  plus a fresh 2D sin-cos grid spanning 0..15 (not the model's cropped position table);
- the pooled text is used as it is (not zeroed); the blocks are chained;
- block k's residual is repeated ``ceil(depth / blocks)`` times, one per MMDiT block, the last block included
  (ComfyUI reads depth as width / 64: 38 for SD3.5 Large and its 19-block ControlNets; we read the model's block
  count, the same for every released model, which also serves the tiny test models).

diffusers' StableDiffusion3ControlNetPipeline differs on three points: it embeds the latent with the transformer's
``pos_embed`` (its cropped table), gives the last MMDiT block no residual, and takes hints already preprocessed.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from .dit_common import build_on_meta, count_blocks, pad_to_patch, vae_hint_ratio
from .sd3 import MMDIT_HEAD_DIM

#: the ``control_type`` scalar of Stability's files
CONTROL_TYPES = {0: "blur", 1: "canny", 2: "depth"}
#: ComfyUI's sin-cos grid for these ControlNets: positions from CENTER - SPAN to CENTER + SPAN on the short side
GRID_CENTER = GRID_SPAN = 7.5

_EMBEDDERS = {"t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
              "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
              "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
              "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2"}
_BLOCK = {"attn.proj": "attn.to_out.0", "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2",
          "adaLN_modulation.1": "norm1.linear"}


def sd35_sai_to_diffusers(sd: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """(``SD3ControlNetModel`` state dict, control_type or None) of a Stability SD3.5 ControlNet state dict.

    The mapping of diffusers' ``scripts/convert_sd3_controlnet_to_diffusers.py``; ComfyUI's t/y_embedder names of
    the embedders are read too.
    """
    out: dict[str, Any] = {}
    control_type = None
    for key, value in sd.items():
        module, _, kind = key.rpartition(".")
        if key == "control_type":
            control_type = round(float(value.reshape(-1)[0]))
        elif module in _EMBEDDERS:
            out[f"{_EMBEDDERS[module]}.{kind}"] = value
        elif m := re.match(r"transformer_blocks\.(\d+)\.(.+)$", module):
            i, inner = m.groups()
            prefix = f"transformer_blocks.{i}."
            if inner == "attn.qkv":
                for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                    out[f"{prefix}attn.{name}.{kind}"] = part
            else:
                out[f"{prefix}{_BLOCK.get(inner, inner)}.{kind}"] = value
        elif not module.startswith(("x_embedder", "pos_embed.")):  # ComfyUI uses the model's patch embed instead
            out[key] = value
    return out, control_type


def sd35_diffusers_to_sai(sd: dict[str, Any], control_type: int | None = None) -> dict[str, Any]:
    """The inverse of :func:`sd35_sai_to_diffusers` (for writing tiny files in Stability's layout)."""
    inverse_block = {v: k for k, v in _BLOCK.items()}
    out: dict[str, Any] = {}
    for key, value in sd.items():
        module, _, kind = key.rpartition(".")
        m = re.match(r"transformer_blocks\.(\d+)\.(.+)$", module)
        if m and m.group(2) in ("attn.to_k", "attn.to_v"):
            continue
        if m and m.group(2) == "attn.to_q":
            p = f"transformer_blocks.{m.group(1)}.attn."
            out[f"{p}qkv.{kind}"] = torch.cat([sd[f"{p}to_q.{kind}"], sd[f"{p}to_k.{kind}"], sd[f"{p}to_v.{kind}"]])
        elif m:
            out[f"transformer_blocks.{m.group(1)}.{inverse_block.get(m.group(2), m.group(2))}.{kind}"] = value
        else:
            out[key] = value
    if control_type is not None:
        out["control_type"] = torch.tensor([float(control_type)])
    return out


def infer_sd35_controlnet_config(sd: dict[str, Any]) -> dict[str, Any]:
    """``SD3ControlNetModel`` kwargs from the shapes of a converted Stability SD3.5 ControlNet.

    Heads: width / 64, as ComfyUI (at least one, so tiny test files of width < 64 load as one head).
    """
    embed = sd["pos_embed_input.proj.weight"]
    width, channels, patch = embed.shape[0], embed.shape[1], embed.shape[2]
    heads = max(1, width // MMDIT_HEAD_DIM)
    return {"patch_size": patch, "in_channels": channels, "out_channels": channels,
            "num_layers": count_blocks(sd, "transformer_blocks"), "attention_head_dim": width // heads,
            "num_attention_heads": heads, "joint_attention_dim": None, "caption_projection_dim": width,
            "pooled_projection_dim": sd["time_text_embed.text_embedder.linear_1.weight"].shape[1],
            "pos_embed_max_size": None, "pos_embed_type": None, "use_pos_embed": False,
            "force_zeros_for_pooled_projection": False}


def sincos_grid(width: int, h: int, w: int, device: Any = None) -> torch.Tensor:
    """ComfyUI's position grid for these ControlNets: [h*w, width] float32 sin-cos of positions spanning 0..15 on
    the short side (the long side proportionally wider), the w half first."""
    from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid

    small = min(h, w)
    span_h, span_w = h / small * GRID_SPAN, w / small * GRID_SPAN
    grid_h, grid_w = torch.meshgrid(torch.linspace(GRID_CENTER - span_h, GRID_CENTER + span_h, h, device=device),
                                    torch.linspace(GRID_CENTER - span_w, GRID_CENTER + span_w, w, device=device),
                                    indexing="ij")
    emb_w = get_1d_sincos_pos_embed_from_grid(width // 2, grid_w.reshape(-1), output_type="pt")
    emb_h = get_1d_sincos_pos_embed_from_grid(width // 2, grid_h.reshape(-1), output_type="pt")
    return torch.cat([emb_w, emb_h], dim=1).float()


def _preprocess(control_type: int | None, hint: torch.Tensor) -> torch.Tensor:
    if control_type == 1:  # canny: ComfyUI's formula for Stability's canny ControlNet, kept as it is
        return hint * 255 * 0.5 + 0.5
    if control_type == 2:  # depth: trained on inverted depth maps
        return 1.0 - hint
    return hint


class SD35ControlNet(nn.Module):
    """A Stability SD3.5 ControlNet: diffusers' single-stream ``SD3ControlNetModel`` with ComfyUI's semantics."""

    kind = "sd3"

    def __init__(self, net: nn.Module, control_type: int | None = None):
        super().__init__()
        self.net = net
        self.control_type = control_type
        cfg = net.config
        # the model's patch embedding, copied in at each run start (ComfyUI's pre_run does the same)
        self.x_embedder = nn.Conv2d(cfg.in_channels, self.width, cfg.patch_size, stride=cfg.patch_size)
        nn.init.zeros_(self.x_embedder.weight)
        nn.init.zeros_(self.x_embedder.bias)
        self.depth = 0  # the model's MMDiT block count, also set at run start
        self._last_grid: tuple[tuple, torch.Tensor] | None = None

    @property
    def width(self) -> int:
        """The token width of its blocks (the MMDiT's)."""
        return self.net.config.num_attention_heads * self.net.config.attention_head_dim

    def describe(self) -> str:
        """What it is for, as far as the file says."""
        kind = CONTROL_TYPES.get(self.control_type, "unknown type")
        large = " for SD3.5 Large" if self.width == 2432 else ""
        return (f"a Stability SD3.5 ControlNet ({kind}, {self.net.config.num_layers} blocks, width {self.width})"
                f"{large}")

    def check(self, model: Any, name: str) -> None:
        """ModelError unless ``model`` is an SD3 MMDiT of the same width and pooled width; then borrow its patch
        embedding and block count for this run."""
        cfg, mine = model.config, self.net.config
        transformer = getattr(getattr(model, "network", None), "transformer", None)
        sd3 = getattr(model, "arch", "") == "sd3" and isinstance(cfg, dict) and transformer is not None
        if sd3 and cfg["pooled_projection_dim"] != mine.pooled_projection_dim == self.width:
            # ComfyUI's "double_y_emb" variant: a square pooled embedder after the model's own
            raise ModelError(f"{name}: an SD3.5 ControlNet that re-embeds the model's pooled embedding (a "
                             "research variant): not implemented yet in the embedded engine; run this workflow on "
                             "a ComfyUI server with ck.ComfyServer")
        if not (sd3 and cfg["num_attention_heads"] * cfg["attention_head_dim"] == self.width
                and cfg["pooled_projection_dim"] == mine.pooled_projection_dim
                and cfg["patch_size"] == mine.patch_size):
            arch = getattr(model, "arch", type(model).__name__)
            what = model.family.describe(model.config) if hasattr(model, "family") else repr(model)
            raise ModelError(f"{name}: this is {self.describe()} but the model is {arch} ({what}); use it with the "
                             "SD3.5 checkpoint it was made for (SD3.5 Large for Stability's canny/depth/blur files)")
        proj = transformer.pos_embed.proj
        with torch.no_grad():
            self.x_embedder.weight.copy_(proj.weight[:, :self.x_embedder.in_channels])
            self.x_embedder.bias.copy_(proj.bias)
        self.depth = len(transformer.transformer_blocks)

    def hint_ratio(self, vae: Any) -> int:
        """Hint pixels per latent pixel: the VAE's downscale (the hint is encoded to a latent)."""
        return vae_hint_ratio(vae, "ControlNetApplyAdvanced's vae, or ControlNetApplySD3")

    def prepare_hint(self, hint: torch.Tensor, control: Any, model: Any) -> torch.Tensor:
        """The hint preprocessed for its control type, encoded with the apply node's VAE, in SD3's latent space."""
        raw = control.vae.encode(_preprocess(self.control_type, hint).movedim(1, -1))
        return model.latent_format.process_in(raw)

    def residuals(self, x: torch.Tensor, t: torch.Tensor, hint: torch.Tensor, context: torch.Tensor,
                  pooled: torch.Tensor | None) -> dict[str, list[torch.Tensor]]:
        """{"output": one residual per MMDiT block}; ``t`` is sigma x 1000, as the SD3 family's timestep."""
        net, patch = self.net, self.net.config.patch_size
        dtype = self.x_embedder.weight.dtype
        b = x.shape[0]
        # reflect-padded to the patch size, as ComfyUI's PatchEmbed in these ControlNets
        x, hint = pad_to_patch(x.to(dtype), patch, "reflect"), pad_to_patch(hint.to(dtype), patch, "reflect")
        if hint.shape[0] != b:
            hint = hint.expand(b, -1, -1, -1)
        h, w = x.shape[-2] // patch, x.shape[-1] // patch
        tokens = self.x_embedder(x).flatten(2).transpose(1, 2)
        tokens = tokens + self._grid(h, w, tokens)
        timestep = t.reshape(-1).expand(b).to(dtype)
        if pooled is None:  # ComfyUI: no y, the time embedding alone
            outs = self._blocks_without_pooled(tokens, hint, timestep)
        else:
            outs = net(hidden_states=tokens, controlnet_cond=hint, pooled_projections=pooled.to(dtype),
                       timestep=timestep, return_dict=False)[0]
        repeat = math.ceil(max(self.depth, 1) / len(outs))
        return {"output": [o for o in outs for _ in range(repeat)]}

    def _grid(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        # the same for every step of a run: kept for the last size asked
        key = (h, w, like.device, like.dtype)
        if self._last_grid is None or self._last_grid[0] != key:
            self._last_grid = (key, sincos_grid(self.width, h, w, like.device).to(like.dtype))
        return self._last_grid[1]

    def _blocks_without_pooled(self, tokens: torch.Tensor, hint: torch.Tensor, timestep: torch.Tensor
                               ) -> list[torch.Tensor]:
        embed = self.net.time_text_embed
        temb = embed.timestep_embedder(embed.time_proj(timestep).to(tokens.dtype))
        h = tokens + self.net.pos_embed_input(hint)
        outs = []
        for block, zero in zip(self.net.transformer_blocks, self.net.controlnet_blocks):
            h = block(h, temb)
            outs.append(zero(h))
        return outs


def build_sd35_controlnet(sd: dict[str, Any], name: str) -> SD35ControlNet:
    """An :class:`SD35ControlNet` from a Stability-layout state dict (ModelError when it is incomplete)."""
    from diffusers import SD3ControlNetModel

    converted, control_type = sd35_sai_to_diffusers(sd)
    try:
        config = infer_sd35_controlnet_config(converted)
    except (KeyError, IndexError) as e:
        raise ModelError(f"{name}: the SD3.5 ControlNet weights are incomplete (missing {e}); re-download the file"
                         ) from None
    net = build_on_meta(lambda: SD3ControlNetModel(**config), converted, "SD3.5 ControlNet", name)
    return SD35ControlNet(net, control_type)
