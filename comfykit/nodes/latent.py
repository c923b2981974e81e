"""Latent nodes: EmptyLatentImage, LatentUpscale, LatentUpscaleBy."""

from __future__ import annotations

from typing import Any

from .base import COMBO, FLOAT, INT, LINK, MAX_RESOLUTION, Node

UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
CROP_METHODS = ("disabled", "center")


class EmptyLatentImage(Node):
    """An all-zero latent batch to start text-to-image from (4 channels; 16-channel models widen it)."""

    DISPLAY, CATEGORY = "Empty Latent Image", "latent"
    INPUTS = {"width": INT(512, 16, MAX_RESOLUTION, 8, "Image width in pixels."),
              "height": INT(512, 16, MAX_RESOLUTION, 8, "Image height in pixels."),
              "batch_size": INT(1, 1, 4096, tip="Images per batch.")}
    OUTPUTS = ("LATENT",)
    FUNCTION = "generate"

    def generate(self, width: int, height: int, batch_size: int) -> tuple[dict[str, Any]]:
        import torch

        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


class LatentUpscale(Node):
    """Resizes a latent to a pixel size (0 keeps the aspect ratio; each side at least 64 px)."""

    DISPLAY, CATEGORY = "Upscale Latent", "latent"
    INPUTS = {"samples": LINK("LATENT", "Latent to resize."),
              "upscale_method": COMBO(UPSCALE_METHODS),
              "width": INT(512, 0, MAX_RESOLUTION, 8, "Target width in pixels (0 keeps the aspect ratio)."),
              "height": INT(512, 0, MAX_RESOLUTION, 8, "Target height in pixels (0 keeps the aspect ratio)."),
              "crop": COMBO(CROP_METHODS)}
    OUTPUTS = ("LATENT",)
    FUNCTION = "upscale"

    def upscale(self, samples: dict[str, Any], upscale_method: str, width: int, height: int,
                crop: str) -> tuple[dict[str, Any]]:
        from ..engine.images import common_upscale

        if width == 0 and height == 0:
            return (samples,)
        x = samples["samples"]
        if width == 0:
            height = max(64, height)
            width = max(64, round(x.shape[-1] * height / x.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(x.shape[-2] * width / x.shape[-1]))
        else:
            width, height = max(64, width), max(64, height)
        return ({**samples, "samples": common_upscale(x, width // 8, height // 8, upscale_method, crop)},)


class LatentUpscaleBy(Node):
    """Resizes a latent by a factor (each side rounded)."""

    DISPLAY, CATEGORY = "Upscale Latent By", "latent"
    INPUTS = {"samples": LINK("LATENT", "Latent to resize."),
              "upscale_method": COMBO(UPSCALE_METHODS),
              "scale_by": FLOAT(1.5, 0.01, 8.0, 0.01, "Scale factor.")}
    OUTPUTS = ("LATENT",)
    FUNCTION = "upscale"

    def upscale(self, samples: dict[str, Any], upscale_method: str, scale_by: float) -> tuple[dict[str, Any]]:
        from ..engine.images import common_upscale

        x = samples["samples"]
        size = round(x.shape[-1] * scale_by), round(x.shape[-2] * scale_by)
        return ({**samples, "samples": common_upscale(x, *size, upscale_method, "disabled")},)
