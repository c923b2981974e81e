"""`VAE`, the engine-facing wrapper around the autoencoder (``DiffusionModel`` lives with the family seam)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from ..interrupt import check as check_interrupt
from .family import DiffusionModel, module_device, module_dtype
from .vae import AutoencoderKL

log = logging.getLogger(__name__)

__all__ = ["VAE", "DiffusionModel", "module_device", "module_dtype", "shared_copy", "tiled_scale"]


def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters are the same tensors (so patching one copy leaves the other alone)."""
    memo: dict[int, Any] = {id(p): p for p in module.parameters()}
    memo.update({id(b): b for b in module.buffers()})
    return copy.deepcopy(module, memo)


def _to_images(pixels: torch.Tensor) -> torch.Tensor:
    return ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: every `tile - overlap`, the last ones pulled back inside (ComfyUI's rule)."""
    return [max(0, min(size - tile, s)) for s in range(0, max(size - overlap, 1), max(1, tile - overlap))]


def tiled_scale(x: torch.Tensor, fn, tile: tuple[int, int], overlap: int, scale: float,
                out_channels: int) -> torch.Tensor:
    """`fn` over overlapping (h, w) `tile`s of `x` [B,C,H,W], whose outputs are `scale` times the tile's size;
    the tiles are blended with weights rising linearly over `overlap * scale` pixels from each tile edge."""
    b, _, h, w = x.shape
    out = torch.zeros(b, out_channels, round(h * scale), round(w * scale))
    weight = torch.zeros(1, 1, out.shape[2], out.shape[3])
    feather = round(overlap * scale)
    for y in _starts(h, tile[0], overlap):
        for x0 in _starts(w, tile[1], overlap):
            check_interrupt()  # a big image is many tiles: stop between them when asked
            # one item at a time, as ComfyUI: the point is to need little memory
            part = torch.cat([fn(x[i:i + 1, :, y:y + tile[0], x0:x0 + tile[1]]) for i in range(b)])
            ph, pw = part.shape[2:]
            mask = torch.ones(ph, pw)
            for t in range(min(feather, ph)):
                mask[t, :] *= (t + 1) / feather
                mask[ph - 1 - t, :] *= (t + 1) / feather
            for t in range(min(feather, pw)):
                mask[:, t] *= (t + 1) / feather
                mask[:, pw - 1 - t] *= (t + 1) / feather
            oy, ox = round(y * scale), round(x0 * scale)
            out[:, :, oy:oy + ph, ox:ox + pw] += part * mask
            weight[:, :, oy:oy + ph, ox:ox + pw] += mask
    return out / weight


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

    def _run(self, fn, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fn(x.to(self.device, self.dtype)).float().cpu()

    def _batched(self, fn, x: torch.Tensor, batch: int, tiled) -> torch.Tensor:
        """`fn` over `x` in batches, halved on out-of-memory; at one item, the rest goes through `tiled`."""
        outs, i = [], 0
        while i < x.shape[0]:
            check_interrupt()
            try:
                outs.append(self._run(fn, x[i:i + batch]))
                i += batch
            except torch.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if batch == 1:  # one image still too big: ComfyUI's fallback, tiles
                    log.warning("out of memory in the VAE (%s): retrying in tiles", self.name or "vae")
                    outs.append(tiled(x[i:]))
                    break
                batch = max(1, batch // 2)  # why: one 1024px SDXL decode alone can fill a small GPU
        return torch.cat(outs)

    def decode(self, raw_latent: torch.Tensor, batch: int = 4) -> torch.Tensor:
        """Raw latent [B,C,h,w] -> images [B,H,W,3] float32 in 0..1 (tiled when memory runs out)."""
        if raw_latent.ndim != 4 or raw_latent.shape[1] != self.latent_channels:
            raise ValueError(f"VAE.decode expects a [B,{self.latent_channels},h,w] latent, got {tuple(raw_latent.shape)}")
        pixels = self._batched(self.module.decode, raw_latent, batch, self._decode_tiles)
        return _to_images(pixels)

    def _decode_tiles(self, raw_latent: torch.Tensor, tile_x: int = 64, tile_y: int = 64,
                      overlap: int = 16) -> torch.Tensor:
        # ComfyUI's tiled decode: the mean of three tilings (tall, wide, square) hides each one's seams
        f = self.downscale
        passes = ((tile_y * 2, tile_x // 2), (tile_y // 2, tile_x * 2), (tile_y, tile_x))
        out = sum(tiled_scale(raw_latent, lambda t: self._run(self.module.decode, t), tile, overlap, f, 3)
                  for tile in passes)
        return out / 3.0

    def decode_tiled(self, raw_latent: torch.Tensor, tile_x: int = 64, tile_y: int = 64,
                     overlap: int = 16) -> torch.Tensor:
        """Decode in overlapping latent tiles (sizes in latent pixels) blended with linear feathers, as ComfyUI's
        VAEDecodeTiled: far less memory, nearly the same picture (the mid-block attention sees one tile)."""
        return _to_images(self._decode_tiles(raw_latent, tile_x, tile_y, overlap))

    def _pixels_in(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] < 3:
            raise ValueError(f"VAE.encode expects images [B,H,W,3] in 0..1, got {tuple(images.shape)}")
        f = self.downscale
        h, w = images.shape[1] // f * f, images.shape[2] // f * f
        if h == 0 or w == 0:
            raise ValueError(f"image {tuple(images.shape[1:3])} is smaller than the VAE's {f}x{f} patch")
        return images[:, :h, :w, :3].permute(0, 3, 1, 2).float() * 2 - 1

    def encode(self, images: torch.Tensor, batch: int = 4) -> torch.Tensor:
        """Images [B,H,W,3] in 0..1 -> raw latent (posterior mean); sizes are cropped to multiples of 8."""
        return self._batched(self.module.encode, self._pixels_in(images), batch, self._encode_tiles)

    def _encode_tiles(self, x: torch.Tensor, tile_x: int = 512, tile_y: int = 512, overlap: int = 64) -> torch.Tensor:
        passes = ((tile_y, tile_x), (tile_y // 2, tile_x * 2), (tile_y * 2, tile_x // 2))
        out = sum(tiled_scale(x, lambda t: self._run(self.module.encode, t), tile, overlap, 1 / self.downscale,
                              self.latent_channels) for tile in passes)
        return out / 3.0

    def encode_tiled(self, images: torch.Tensor, tile_x: int = 512, tile_y: int = 512,
                     overlap: int = 64) -> torch.Tensor:
        """Encode in overlapping pixel tiles blended with linear feathers, as ComfyUI's VAEEncodeTiled."""
        return self._encode_tiles(self._pixels_in(images), tile_x, tile_y, overlap)

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
