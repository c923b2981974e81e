"""Live previews of the denoised latent: latent2rgb (a linear map) or a TAESD decoder, to a PIL image.

During sampling the engine takes a :meth:`Previewer.snapshot`: the RGB bytes of the first item, copied to the
CPU, as a :class:`~comfykit.events.LazyPreview` that is resized and made a PIL image only by whoever looks at it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...events import LazyPreview
from .latent_formats import LatentFormat

PREVIEW_METHODS = ("latent2rgb", "taesd")

#: Pixels per latent pixel of the VAEs whose formats have no ``spatial_factor`` of their own (SD1/SD2/SDXL/SD3/FLUX).
VAE_FACTOR = 8


def find_taesd_decoder(vae_approx_dir: str | Path | None, latent_format: LatentFormat) -> Path | None:
    """The first file in `vae_approx_dir` whose name starts with the format's TAESD decoder name, if any."""
    if vae_approx_dir is None or latent_format.taesd_decoder_name is None:
        return None
    folder = Path(vae_approx_dir)
    if not folder.is_dir():
        return None
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.startswith(latent_format.taesd_decoder_name):
            return path
    return None


def to_ubyte(image: torch.Tensor) -> torch.Tensor:
    """[H, W, 3] values in [-1, 1] -> uint8 on the CPU, as ComfyUI's preview_to_image."""
    return ((image.float().cpu() + 1.0) / 2.0).clamp(0, 1).mul(255).to(torch.uint8)


def to_pil(image: torch.Tensor) -> Any:
    """[H, W, 3] values in [-1, 1] -> PIL image, as ComfyUI's preview_to_image."""
    from PIL import Image

    return Image.fromarray(to_ubyte(image).numpy())


def fit(width: int, height: int, limit: int) -> tuple[int, int]:
    """(width, height) shrunk, keeping the aspect ratio, to fit ``limit`` x ``limit``; never enlarged."""
    if max(width, height) <= limit:
        return width, height
    if width >= height:
        return limit, max(1, round(height / width * limit))
    return max(1, round(width / height * limit)), limit


class Previewer:
    """Turns a model-space x0 [B, C, h, w] into a small RGB PIL preview of its first item.

    >>> p = Previewer(SD15)                                   # latent2rgb
    >>> p = Previewer(SD15, "taesd", "models/vae_approx/taesd_decoder.safetensors")
    """

    def __init__(self, latent_format: LatentFormat, method: str = "latent2rgb",
                 taesd_path: str | Path | None = None, preview_size: int = 512,
                 device: str | torch.device = "cpu"):
        if method not in PREVIEW_METHODS:
            raise ValueError(f"preview method must be one of {PREVIEW_METHODS}, got {method!r}")
        self.latent_format, self.preview_size = latent_format, int(preview_size)
        self.decoder = None
        if method == "taesd" and taesd_path is not None and Path(taesd_path).is_file():
            from .taesd import load_taesd_decoder

            self.decoder = load_taesd_decoder(taesd_path, latent_format.latent_channels, device)
        self.method = "taesd" if self.decoder is not None else "latent2rgb"
        if self.method == "latent2rgb" and latent_format.rgb_factors is None:
            raise ValueError(f"latent format {latent_format.name} has no latent2rgb factors; use method='taesd'")

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """x0[0] as an [H, W, 3] tensor in [-1, 1] (latent resolution for latent2rgb, 8x for TAESD)."""
        if self.decoder is not None:
            param = next(self.decoder.parameters())
            with torch.no_grad():
                out = self.decoder(x0[:1].to(device=param.device, dtype=param.dtype))[0]
            return out.float().sub(0.5).mul(2).movedim(0, -1)
        fmt = self.latent_format
        factors = torch.tensor(fmt.rgb_factors, dtype=torch.float32)
        bias = torch.tensor(fmt.rgb_bias, dtype=torch.float32) if fmt.rgb_bias is not None else None
        latent = x0[0].detach().float().cpu().movedim(0, -1)
        return torch.nn.functional.linear(latent, factors.T, bias)

    def snapshot(self, x0: torch.Tensor) -> LazyPreview:
        """The preview of x0[0] as raw RGB bytes, to be shown at the decoded image's size (at most preview_size).

        Only the decode and a small copy to the CPU happen here (on the sampling thread); the resize and the PIL
        image wait until someone reads ``event.preview``.
        """
        factor = getattr(self.latent_format, "spatial_factor", VAE_FACTOR)
        target = fit(int(x0.shape[-1]) * factor, int(x0.shape[-2]) * factor, self.preview_size)
        ubyte = to_ubyte(self.decode(x0)).contiguous()
        height, width = int(ubyte.shape[0]), int(ubyte.shape[1])
        return LazyPreview(ubyte.numpy().tobytes(), (width, height), target)

    def to_image(self, x0: torch.Tensor) -> Any:
        """The preview of x0[0] as a PIL image scaled to fit preview_size x preview_size."""
        from PIL import Image, ImageOps

        image = to_pil(self.decode(x0))
        size = self.preview_size
        return ImageOps.contain(image, (size, size), Image.Resampling.BILINEAR)
