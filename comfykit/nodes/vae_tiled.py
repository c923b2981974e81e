"""Tiled VAE nodes: VAEDecodeTiled and VAEEncodeTiled (large images on little memory)."""

from __future__ import annotations

from typing import Any

from .base import INT, LINK, Node

_TEMPORAL_SIZE = "Only used for video VAEs: Amount of frames to {} at a time."
_TEMPORAL_OVERLAP = "Only used for video VAEs: Amount of frames to overlap."


def _fit(tile_size: int, overlap: int, temporal_size: int, temporal_overlap: int) -> tuple[int, int]:
    """ComfyUI's clamps: the overlap at most a quarter of the tile, the frame overlap at most half the window."""
    if tile_size < overlap * 4:
        overlap = tile_size // 4
    if temporal_size < temporal_overlap * 2:
        temporal_overlap = temporal_overlap // 2
    return overlap, temporal_overlap


class VAEDecodeTiled(Node):
    """Decodes a latent in overlapping tiles, using far less memory than VAE Decode."""

    DISPLAY, CATEGORY = "VAE Decode (Tiled)", "_for_testing"
    INPUTS = {"samples": LINK("LATENT"), "vae": LINK("VAE"),
              "tile_size": INT(512, 64, 4096, 32), "overlap": INT(64, 0, 4096, 32),
              "temporal_size": INT(64, 8, 4096, 4, _TEMPORAL_SIZE.format("decode")),
              "temporal_overlap": INT(8, 4, 4096, 4, _TEMPORAL_OVERLAP)}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "decode"

    def decode(self, samples: dict[str, Any], vae: Any, tile_size: int, overlap: int, temporal_size: int,
               temporal_overlap: int) -> tuple[Any]:
        overlap, temporal_overlap = _fit(tile_size, overlap, temporal_size, temporal_overlap)
        f = vae.downscale  # tile sizes are pixels; the decoder's tiles are latent pixels
        images = self.call_with(lambda: vae.decode_tiled(samples["samples"], tile_size // f, tile_size // f,
                                                         overlap // f), vae)
        return (images,)


class VAEEncodeTiled(Node):
    """Encodes images in overlapping tiles, using far less memory than VAE Encode."""

    DISPLAY, CATEGORY = "VAE Encode (Tiled)", "_for_testing"
    INPUTS = {"pixels": LINK("IMAGE"), "vae": LINK("VAE"),
              "tile_size": INT(512, 64, 4096, 64), "overlap": INT(64, 0, 4096, 32),
              "temporal_size": INT(64, 8, 4096, 4, _TEMPORAL_SIZE.format("encode")),
              "temporal_overlap": INT(8, 4, 4096, 4, _TEMPORAL_OVERLAP)}
    OUTPUTS = ("LATENT",)
    FUNCTION = "encode"

    def encode(self, pixels: Any, vae: Any, tile_size: int, overlap: int, temporal_size: int,
               temporal_overlap: int) -> tuple[dict[str, Any]]:
        overlap, _ = _fit(tile_size, overlap, temporal_size, temporal_overlap)
        latent = self.call_with(lambda: vae.encode_tiled(pixels[:, :, :, :3], tile_size, tile_size, overlap), vae)
        return ({"samples": latent},)
