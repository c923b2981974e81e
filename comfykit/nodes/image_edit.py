"""Image edits: ImageScaleBy, ImageScaleToTotalPixels, ImageInvert, ImageBatch, ImageCrop, EmptyImage.

IMAGE is ``[B, H, W, C]`` float 0..1 (C = 3, or 4 with alpha).
"""

from __future__ import annotations

import math
from typing import Any

from .base import COMBO, FLOAT, INT, LINK, MAX_RESOLUTION, Node
from .image import IMAGE_UPSCALE_METHODS

_IMAGE = LINK("IMAGE")


def _resize(image: Any, width: int, height: int, method: str, crop: str = "disabled") -> Any:
    from ..engine.images import common_upscale

    return common_upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


class ImageScaleBy(Node):
    """Resizes images by a factor (each side rounded)."""

    DISPLAY, CATEGORY = "Upscale Image By", "image/upscaling"
    INPUTS = {"image": _IMAGE, "upscale_method": COMBO(IMAGE_UPSCALE_METHODS),
              "scale_by": FLOAT(1.0, 0.01, 8.0, 0.01)}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "upscale"

    def upscale(self, image: Any, upscale_method: str, scale_by: float) -> tuple[Any]:
        width, height = round(image.shape[2] * scale_by), round(image.shape[1] * scale_by)
        return (_resize(image, width, height, upscale_method),)


class ImageScaleToTotalPixels(Node):
    """Resizes images to about a number of megapixels (1 MP = 1024 x 1024), keeping the aspect ratio."""

    DISPLAY, CATEGORY, PYTHON_MODULE = None, "image/upscaling", "comfy_extras.nodes_post_processing"
    INPUTS = {"image": _IMAGE, "upscale_method": COMBO(IMAGE_UPSCALE_METHODS),
              "megapixels": FLOAT(1.0, 0.01, 16.0, 0.01)}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "upscale"

    def upscale(self, image: Any, upscale_method: str, megapixels: float) -> tuple[Any]:
        scale = math.sqrt(megapixels * 1024 * 1024 / (image.shape[2] * image.shape[1]))
        width, height = round(image.shape[2] * scale), round(image.shape[1] * scale)
        return (_resize(image, width, height, upscale_method),)


class ImageInvert(Node):
    """Inverts images (1 - x), an alpha channel included, as ComfyUI 0.3.64."""

    DISPLAY, CATEGORY = "Invert Image", "image"
    INPUTS = {"image": _IMAGE}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "invert"

    def invert(self, image: Any) -> tuple[Any]:
        # ComfyUI keeps alpha only from 2026 on (Comfy-Org/ComfyUI#15622); 0.3.64's result is the reference
        return (1.0 - image,)


class ImageBatch(Node):
    """Joins two image batches; image2 is resized (bilinear, centre crop) to image1's size if they differ."""

    DISPLAY, CATEGORY = "Batch Images", "image"
    INPUTS = {"image1": _IMAGE, "image2": _IMAGE}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "batch"

    def batch(self, image1: Any, image2: Any) -> tuple[Any]:
        import torch

        # an RGB and an RGBA batch: the RGB one gets an opaque alpha (0.3.64 failed here; later ComfyUI does this)
        if image1.shape[-1] != image2.shape[-1]:
            pad = abs(image1.shape[-1] - image2.shape[-1])
            if image1.shape[-1] > image2.shape[-1]:
                image2 = torch.nn.functional.pad(image2, (0, pad), value=1.0)
            else:
                image1 = torch.nn.functional.pad(image1, (0, pad), value=1.0)
        if image1.shape[1:] != image2.shape[1:]:
            image2 = _resize(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
        return (torch.cat((image1, image2.to(image1.device, image1.dtype)), dim=0),)


class ImageCrop(Node):
    """Cuts a width x height rectangle out of images at (x, y) (smaller where it runs past the edge)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "Image Crop", "image/transform", "comfy_extras.nodes_images"
    INPUTS = {"image": _IMAGE, "width": INT(512, 1, MAX_RESOLUTION, 1), "height": INT(512, 1, MAX_RESOLUTION, 1),
              "x": INT(0, 0, MAX_RESOLUTION, 1), "y": INT(0, 0, MAX_RESOLUTION, 1)}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "crop"

    def crop(self, image: Any, width: int, height: int, x: int, y: int) -> tuple[Any]:
        # an offset past the edge keeps the last row/column, as ComfyUI
        x, y = min(x, image.shape[2] - 1), min(y, image.shape[1] - 1)
        return (image[:, y:y + height, x:x + width, :],)


class EmptyImage(Node):
    """A batch of images of one colour (``color`` is 0xRRGGBB)."""

    DISPLAY, CATEGORY = "EmptyImage", "image"
    INPUTS = {"width": INT(512, 1, MAX_RESOLUTION, 1), "height": INT(512, 1, MAX_RESOLUTION, 1),
              "batch_size": INT(1, 1, 4096), "color": INT(0, 0, 0xFFFFFF, 1, display="color")}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "generate"

    def generate(self, width: int, height: int, batch_size: int, color: int) -> tuple[Any]:
        import torch

        rgb = [((color >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)]
        return (torch.tensor(rgb, dtype=torch.float32).expand(batch_size, height, width, 3).clone(),)
