"""The LDM `openaimodel` UNet of SD1.x, SD2.x and SDXL, with parameters named like the original checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def norm_groups(channels: int, preferred: int = 32) -> int:
    """GroupNorm group count: 32 when it divides `channels`, else the largest divisor below 32 (tiny models)."""
    for groups in range(min(preferred, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    """A GroupNorm following the `norm_groups` rule every comfykit model (and demo checkpoint) uses."""
    return nn.GroupNorm(norm_groups(channels), channels, eps=eps)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps, as LDM and SDXL's adm use."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


@dataclass
class UNetConfig:
    """Everything needed to build the UNet; `checkpoint.infer_unet_config` reads it off tensor shapes."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)  # per level, input side
    transformer_depth_output: tuple[int, ...] = field(default_factory=tuple)  # per output block; derived if empty
    transformer_depth_middle: int = 1  # 0: the middle block has no transformer
    context_dim: int = 768
    num_heads: int = 8  # used when num_head_channels == -1 (SD1)
    num_head_channels: int = -1  # 64 for SD2/SDXL
    use_linear: bool = False
    adm_in_channels: int | None = None

    def heads(self, channels: int) -> tuple[int, int]:
        """(heads, head_dim) of a transformer with `channels` channels."""
        if self.num_head_channels > 0:
            head_dim = min(self.num_head_channels, channels)  # tiny models: fewer channels than one head
            return channels // head_dim, head_dim
        return self.num_heads, channels // self.num_heads

    def output_depths(self) -> tuple[int, ...]:
        if self.transformer_depth_output:
            return tuple(self.transformer_depth_output)
        depths = []
        for level in reversed(range(len(self.channel_mult))):
            depths += [self.transformer_depth[level]] * (self.num_res_blocks[level] + 1)
        return tuple(depths)


class TimestepBlock(nn.Module):
    """A block whose forward also takes the timestep embedding."""


class TimestepEmbedSequential(nn.Sequential):
    """Runs children in order, handing the timestep embedding and context to those that need them."""

    def forward(self, x, emb, context=None, output_shape=None):  # noqa: D102
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, output_shape)
            else:
                x = layer(x)
        return x


class ResBlock(TimestepBlock):
    """LDM residual block: GN-SiLU-conv, add the projected timestep embedding, GN-SiLU-conv, skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(group_norm(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):  # noqa: D102
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):  # noqa: D102
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, output_shape=None):  # noqa: D102
        # to the size of the skip connection that follows (as ComfyUI): an odd-sized latent or area crop was
        # rounded up on the way down, so plain 2x would come back one pixel too large
        if output_shape is not None:
            return self.conv(F.interpolate(x, size=tuple(output_shape[-2:]), mode="nearest"))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class CrossAttention(nn.Module):
    """Multi-head attention (self when context is None) with to_q/to_k/to_v/to_out.0 like the checkpoints."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x, context=None):  # noqa: D102
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b = x.shape[0]
        q, k, v = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[3]))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):  # noqa: D102
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x):  # noqa: D102
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, head_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context):  # noqa: D102
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, proj_in (linear or 1x1 conv), `depth` transformer blocks over the pixels, proj_out, residual."""

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int, context_dim: int, use_linear: bool):
        super().__init__()
        inner = heads * head_dim
        self.use_linear = use_linear
        self.norm = group_norm(channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, head_dim, context_dim) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x, context):  # noqa: D102
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class UNetModel(nn.Module):
    """The UNet: `input_blocks`, `middle_block`, `output_blocks`, `time_embed`, `label_emb` (SDXL), `out`."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        mc = cfg.model_channels
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.adm_in_channels:
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(cfg.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)))

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            heads, head_dim = cfg.heads(ch)
            return SpatialTransformer(ch, heads, head_dim, depth, cfg.context_dim, cfg.use_linear)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skip_channels, ch = [mc], mc
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks[level]):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc)]
                ch = mult * mc
                if cfg.transformer_depth[level]:
                    layers.append(transformer(ch, cfg.transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        middle: list[nn.Module] = [ResBlock(ch, emb_dim, ch)]
        if cfg.transformer_depth_middle:
            middle.append(transformer(ch, cfg.transformer_depth_middle))
        middle.append(ResBlock(ch, emb_dim, ch))
        self.middle_block = TimestepEmbedSequential(*middle)

        depths = iter(cfg.output_depths())
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mc * mult)]
                ch = mc * mult
                depth = next(depths)
                if depth:
                    layers.append(transformer(ch, depth))
                if level and i == cfg.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, control: dict[str, list] | None = None) -> torch.Tensor:
        """Predict eps (or v) for latents `x` at `timesteps` given cross-attention `context` and SDXL `y`.

        `control`: ControlNet residuals as ComfyUI's UNet takes them, {"input"|"middle"|"output": [tensor|None]};
        each list is used from its end: "input" after each input block, "middle" after the middle block, "output"
        on each skip connection as the output blocks take it (so "output" lists residuals in input-block order).
        """
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        if self.config.adm_in_channels:
            if y is None:
                raise ValueError("this UNet (SDXL) needs y= the adm vector from encode_adm()")
            emb = emb + self.label_emb(y.to(dtype))
        h, skips = x.to(dtype), []
        context = context.to(dtype)
        control = {k: list(v) for k, v in control.items()} if control else {}
        for block in self.input_blocks:
            h = _add_control(block(h, emb, context), control, "input")
            skips.append(h)
        h = _add_control(self.middle_block(h, emb, context), control, "middle")
        for block in self.output_blocks:
            h = torch.cat([h, _add_control(skips.pop(), control, "output")], dim=1)
            h = block(h, emb, context, skips[-1].shape if skips else None)
        return self.out(h)


def _add_control(h: torch.Tensor, control: dict[str, list], name: str) -> torch.Tensor:
    """`h` plus the last residual of `control[name]` (popped), as ComfyUI's UNet applies ControlNet outputs."""
    residuals = control.get(name)
    if not residuals:
        return h
    residual = residuals.pop()
    if residual is None:
        return h
    if residual.shape[1:] != h.shape[1:]:
        raise ValueError(f"a ControlNet residual of shape {tuple(residual.shape[1:])} does not fit this UNet's "
                         f"{name} block ({tuple(h.shape[1:])}); the ControlNet is for another model family")
    return h + residual.to(h.dtype)
