"""`VAE`, the engine-facing wrapper around the autoencoder (``DiffusionModel`` lives with the family seam)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .family import DiffusionModel, module_device, module_dtype
from .vae import AutoencoderKL

__all__ = ["VAE", "DiffusionModel", "module_device", "module_dtype", "shared_copy"]


def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters are the same tensors (so patching one copy leaves the other alone)."""
    memo: dict[int, Any] = {id(p): p for p in module.parameters()}
    memo.update({id(b): b for b in module.buffers()})
    return copy.deepcopy(module, memo)


class VAE:
    """Pixels [B,H,W,3] 0..1 <-> raw latents, batched and retried in halves when memory runs out."""

    downscale = 8

    def __init__(self, module: AutoencoderKL, name: str = ""):
        self.module = module
        self.name = name
        self.downscale = 2 ** (len(module.config.ch_mult) - 1)

    @property
    def device(self) -> torch.device:
        """Where the weights are now."""
        return module_device(self.module)

    @property
    def dtype(self) -> torch.dtype:
        """The weight dtype."""
        return module_dtype(self.module)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent space (4 for SD1/SD2/SDXL)."""
        return self.module.config.z_channels

    def _batched(self, fn, x: torch.Tensor, batch: int) -> torch.Tensor:
        outs, i = [], 0
        while i < x.shape[0]:
            try:
                with torch.no_grad():
                    outs.append(fn(x[i:i + batch].to(self.device, self.dtype)).float().cpu())
                i += batch
            except torch.OutOfMemoryError:
                if batch == 1:
                    if fn is self.module.decode:  # one image still too big: decode it in tiles
                        outs.append(self.decode_tiled(x[i:i + 1], raw=True))
                        i += 1
                        continue
                    raise
                batch = max(1, batch // 2)  # why: one 1024px SDXL decode alone can fill a small GPU
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        return torch.cat(outs)

    def decode(self, raw_latent: torch.Tensor, batch: int = 4) -> torch.Tensor:
        """Raw latent [B,C,h,w] -> images [B,H,W,3] float32 in 0..1."""
        if raw_latent.ndim != 4 or raw_latent.shape[1] != self.latent_channels:
            raise ValueError(f"VAE.decode expects a [B,{self.latent_channels},h,w] latent, got {tuple(raw_latent.shape)}")
        pixels = self._batched(self.module.decode, raw_latent, batch)
        return ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).contiguous()

    def decode_tiled(self, raw_latent: torch.Tensor, tile: int = 64, overlap: int = 16,
                     raw: bool = False) -> torch.Tensor:
        """Decode in overlapping `tile`x`tile` latent tiles blended linearly (low memory, slightly different)."""
        b, _, h, w = raw_latent.shape
        f = self.downscale
        out = torch.zeros(b, 3, h * f, w * f)
        weight = torch.zeros(1, 1, h * f, w * f)
        step = max(1, tile - overlap)
        ys = list(range(0, max(h - tile, 0) + 1, step)) + ([h - tile] if h > tile and (h - tile) % step else [])
        xs = list(range(0, max(w - tile, 0) + 1, step)) + ([w - tile] if w > tile and (w - tile) % step else [])
        for y in ys:
            for x in xs:
                part = raw_latent[:, :, y:y + tile, x:x + tile]
                with torch.no_grad():
                    pixels = self.module.decode(part.to(self.device, self.dtype)).float().cpu()
                ph, pw = pixels.shape[2:]
                # feather the edges that overlap a neighbour, so seams fade instead of cutting
                ramp_y = torch.ones(ph)
                ramp_x = torch.ones(pw)
                edge = overlap * f
                if edge:
                    fade = torch.linspace(0, 1, edge + 2)[1:-1]
                    if y > 0:
                        ramp_y[:edge] = fade[: min(edge, ph)]
                    if y + tile < h:
                        ramp_y[-edge:] = fade.flip(0)[-min(edge, ph):]
                    if x > 0:
                        ramp_x[:edge] = fade[: min(edge, pw)]
                    if x + tile < w:
                        ramp_x[-edge:] = fade.flip(0)[-min(edge, pw):]
                mask = (ramp_y[:, None] * ramp_x[None, :])[None, None]
                out[:, :, y * f:y * f + ph, x * f:x * f + pw] += pixels * mask
                weight[:, :, y * f:y * f + ph, x * f:x * f + pw] += mask
        pixels = out / weight.clamp_min(1e-8)
        if raw:
            return pixels
        return ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).contiguous()

    def encode(self, images: torch.Tensor, batch: int = 4) -> torch.Tensor:
        """Images [B,H,W,3] in 0..1 -> raw latent (posterior mean); sizes are cropped to multiples of 8."""
        if images.ndim != 4 or images.shape[-1] < 3:
            raise ValueError(f"VAE.encode expects images [B,H,W,3] in 0..1, got {tuple(images.shape)}")
        f = self.downscale
        h, w = images.shape[1] // f * f, images.shape[2] // f * f
        if h == 0 or w == 0:
            raise ValueError(f"image {tuple(images.shape[1:3])} is smaller than the VAE's {f}x{f} patch")
        x = images[:, :h, :w, :3].permute(0, 3, 1, 2).float() * 2 - 1
        return self._batched(self.module.encode, x, batch)

    def clone(self) -> VAE:
        """A new wrapper sharing the weights."""
        return copy.copy(self)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> VAE:
        """Move the weights in place and return self."""
        self.module.to(device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        c = self.module.config
        return f"VAE(ch={c.ch}, mult={c.ch_mult}, z={c.z_channels}, {self.dtype}, {self.device})"
