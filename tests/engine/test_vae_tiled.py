"""Tiled VAE: the tiles blend back into the full result away from seams; out-of-memory falls back to tiles."""

from __future__ import annotations

import types

import pytest

torch = pytest.importorskip("torch")

from comfykit.engine.models.checkpoint import load_checkpoint  # noqa: E402
from comfykit.engine.models.diffusion import _starts  # noqa: E402
from comfykit.nodes import VAEDecodeTiled, VAEEncodeTiled  # noqa: E402


@pytest.fixture(scope="module")
def vae(models_dir, ckpt_name):
    return load_checkpoint(models_dir / "checkpoints" / ckpt_name)[2]


class LocalDecoder(torch.nn.Module):
    """A decoder whose output pixel depends only on the 3x3 latent neighbourhood (no norms, no attention)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 3, 3, padding=1)
        self.conv.weight.data = torch.randn(3, 4, 3, 3, generator=g) * 0.3

    def forward(self, z):
        return torch.tanh(torch.nn.functional.interpolate(self.conv(z), scale_factor=8, mode="nearest"))


def _seams(size: int, passes: list[int], overlap: int) -> torch.Tensor:
    """Latent rows next to an interior tile edge in any pass (where a 3x3 conv sees another tile's padding)."""
    near = torch.zeros(size, dtype=torch.bool)
    for tile in passes:
        for s in _starts(size, tile, overlap):
            for edge in (s, s + tile):
                if 0 < edge < size:
                    near[max(0, edge - 1):edge + 1] = True
    return near


def test_tiles_blend_back_to_the_full_decode_away_from_seams(vae, monkeypatch):
    local = LocalDecoder()
    monkeypatch.setattr(vae.module, "decode", lambda z: local(z))  # a function: a Module would not shadow the method
    latent = torch.randn(1, 4, 40, 56, generator=torch.Generator().manual_seed(1))
    full = vae.decode(latent)
    tiled = vae.decode_tiled(latent, 16, 16, overlap=4)  # passes (h, w): (32, 8), (8, 32), (16, 16)
    rows = _seams(40, [32, 8, 16], 4).repeat_interleave(8)
    cols = _seams(56, [8, 32, 16], 4).repeat_interleave(8)
    away = ~rows[:, None] & ~cols[None, :]
    assert away.float().mean() > 0.2
    diff = (tiled - full).abs().amax(-1)[0]
    assert diff[away].max() <= 2 / 255
    assert diff.max() > 2 / 255  # the seams do differ: the comparison above is not vacuous


@pytest.mark.slow
def test_out_of_memory_in_vae_decode_falls_back_to_tiles(vae, monkeypatch):
    real = vae.module.decode

    def small_only(z):  # a device that holds 64x64 latents, not more
        if z.shape[0] * z.shape[-2] * z.shape[-1] > 64 * 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(z)

    latent = torch.randn(1, 4, 72, 64, generator=torch.Generator().manual_seed(2))
    want = vae.decode_tiled(latent)  # ComfyUI's fallback tiling: 64x64 latent tiles, overlap 16
    monkeypatch.setattr(vae.module, "decode", small_only)
    got = vae.decode(latent)
    torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_out_of_memory_in_vae_encode_falls_back_to_tiles(vae, monkeypatch):
    real = vae.module.encode

    def small_only(x):
        if x.shape[-2] * x.shape[-1] > 512 * 512:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(x)

    images = torch.rand(1, 576, 512, 3, generator=torch.Generator().manual_seed(3))
    want = vae.encode_tiled(images)
    monkeypatch.setattr(vae.module, "encode", small_only)
    torch.testing.assert_close(vae.encode(images), want)


def test_tiled_nodes_take_pixel_sizes(vae):
    engine = types.SimpleNamespace(call_with=lambda fn, *models: fn())
    latent = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(4))
    (images,) = VAEDecodeTiled(engine).decode({"samples": latent}, vae, 128, 64, 64, 8)
    # 128 px tiles are 16 latent px; an overlap above a quarter of the tile is cut to it (32 px = 4 latent px)
    torch.testing.assert_close(images, vae.decode_tiled(latent, 16, 16, 4))
    (out,) = VAEEncodeTiled(engine).encode(images, vae, 128, 32, 64, 8)
    torch.testing.assert_close(out["samples"], vae.encode_tiled(images, 128, 128, 32))
    assert out["samples"].shape == (1, 4, 24, 24)
