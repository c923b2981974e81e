"""Latent nodes: EmptyLatentImage, LatentUpscale, LatentUpscaleBy."""

from __future__ import annotations

from typing import Any

import torch

from ..images import common_upscale
from .base import Node


class EmptyLatentImage(Node):
    """A batch of zero latents; always 4 channels (SD3/Flux samplers widen an all-zero latent themselves)."""

    FUNCTION = "generate"
    RETURN_TYPES = ("LATENT",)

    def generate(self, width: int, height: int, batch_size: int = 1) -> tuple[dict[str, Any]]:
        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


class LatentUpscale(Node):
    """Resize latents to a pixel size; 0 keeps the aspect ratio, each side at least 64 px."""

    FUNCTION = "upscale"
    RETURN_TYPES = ("LATENT",)

    def upscale(self, samples: dict[str, Any], upscale_method: str, width: int, height: int,
                crop: str) -> tuple[dict[str, Any]]:
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
        out = dict(samples)
        out["samples"] = common_upscale(x, width // 8, height // 8, upscale_method, crop)
        return (out,)


class LatentUpscaleBy(Node):
    """Resize latents by a factor (each side rounded)."""

    FUNCTION = "upscale"
    RETURN_TYPES = ("LATENT",)

    def upscale(self, samples: dict[str, Any], upscale_method: str, scale_by: float) -> tuple[dict[str, Any]]:
        x = samples["samples"]
        out = dict(samples)
        out["samples"] = common_upscale(x, round(x.shape[-1] * scale_by), round(x.shape[-2] * scale_by),
                                        upscale_method, "disabled")
        return (out,)
