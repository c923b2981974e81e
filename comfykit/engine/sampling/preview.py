"""Live previews of the denoised latent: latent2rgb (a linear map) or a TAESD decoder, to a PIL image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .latent_formats import LatentFormat

PREVIEW_METHODS = ("latent2rgb", "taesd")


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


def to_pil(image: torch.Tensor) -> Any:
    """[H, W, 3] values in [-1, 1] -> PIL image, as ComfyUI's preview_to_image."""
    from PIL import Image

    ubyte = ((image.float().cpu() + 1.0) / 2.0).clamp(0, 1).mul(255).to(torch.uint8)
    return Image.fromarray(ubyte.numpy())


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

    def to_image(self, x0: torch.Tensor) -> Any:
        """The preview of x0[0] as a PIL image scaled to fit preview_size x preview_size."""
        from PIL import Image, ImageOps

        image = to_pil(self.decode(x0))
        size = self.preview_size
        return ImageOps.contain(image, (size, size), Image.Resampling.BILINEAR)
