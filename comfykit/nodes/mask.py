"""Mask nodes: ImageToMask, ImageColorToMask, MaskToImage, SolidMask, InvertMask, CropMask, MaskComposite,
GrowMask, FeatherMask, ThresholdMask, MaskPreview and ImageCompositeMasked (ComfyUI's ``comfy_extras/nodes_mask.py``).

MASK is ``[B, H, W]`` float, 1 = selected (repaint, apply); a 2-D ``[H, W]`` mask is read as one item.
:func:`composite` pastes a source onto a destination through an optional mask, for images (pixel offsets) and
latents (offsets in pixels, divided by 8); LatentCompositeMasked in :mod:`comfykit.nodes.latent_ops` shares it.
Where ComfyUI resizes a mask to fit (composites, conditioning and noise masks) comfykit resizes too; where ComfyUI
would fail on mismatched sizes, the node raises a ValueError naming itself, both sizes and the fix.
"""

from __future__ import annotations

from typing import Any

from .base import BOOLEAN, COMBO, FLOAT, INT, LINK, MAX_RESOLUTION, Node
from .image import PreviewImage, save_png

_MASK = LINK("MASK")
_NODES_MASK = "comfy_extras.nodes_mask"


def as_batch(mask: Any) -> Any:
    """A MASK as ``[B, H, W]`` (a 2-D mask becomes one item)."""
    return mask.reshape((-1, mask.shape[-2], mask.shape[-1]))


def to_batch(tensor: Any, batch: int) -> Any:
    """``tensor`` with ``batch`` items: cut, or repeated whole and cut (ComfyUI's ``repeat_to_batch_size``)."""
    have = tensor.shape[0]
    if have > batch:
        return tensor[:batch]
    if have < batch:
        reps = [-(-batch // have)] + [1] * (tensor.ndim - 1)
        return tensor.repeat(reps)[:batch]
    return tensor


def shape_error(node: str, what: str, got: Any, want: Any, fix: str) -> ValueError:
    """The error of a node whose inputs have sizes it cannot combine."""
    return ValueError(f"{node}: {what} has shape {list(got)} but needs to match {list(want)}; {fix}")


def composite(destination: Any, source: Any, x: int, y: int, mask: Any = None, multiplier: int = 8,
              resize_source: bool = False) -> Any:
    """Paste ``source`` [B, C, h, w] into ``destination`` [B, C, H, W] (changed in place and returned) at pixel
    offset (x, y) // ``multiplier``, blended by ``mask`` (resized to the source; 1 = source)."""
    import torch

    source = source.to(destination.device)
    if resize_source:
        source = torch.nn.functional.interpolate(source, size=tuple(destination.shape[-2:]), mode="bilinear")
    source = to_batch(source, destination.shape[0])
    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[-1], top + source.shape[-2]
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = as_batch(mask.to(destination.device, torch.float32))[:, None]
        mask = torch.nn.functional.interpolate(mask, size=tuple(source.shape[-2:]), mode="bilinear")
        mask = to_batch(mask, source.shape[0]).to(destination.dtype)
    # only the part of the source that lands on the destination is pasted
    visible_w = destination.shape[-1] - left + min(0, x)
    visible_h = destination.shape[-2] - top + min(0, y)
    mask = mask[..., :visible_h, :visible_w]
    pasted = mask * source[..., :visible_h, :visible_w]
    kept = (1.0 - mask) * destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = pasted + kept
    return destination


def alpha_fix(destination: Any, source: Any) -> tuple[Any, Any]:
    """Give ``source`` the destination's channel count: drop its alpha, or add an opaque one."""
    import torch

    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        source = torch.nn.functional.pad(source, (0, 1), value=1.0)
    return destination, source


class ImageToMask(Node):
    """Makes a mask from one channel of an image."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "Convert Image to Mask", "mask", _NODES_MASK
    INPUTS = {"image": LINK("IMAGE"), "channel": COMBO(("red", "green", "blue", "alpha"))}
    OUTPUTS = ("MASK",)
    FUNCTION = "image_to_mask"

    def image_to_mask(self, image: Any, channel: str) -> tuple[Any]:
        index = ("red", "green", "blue", "alpha").index(channel)
        if index >= image.shape[-1]:
            raise ValueError(f"ImageToMask: the image has {image.shape[-1]} channels, so it has no {channel} "
                             "channel; pick red, green or blue, or use the MASK output of LoadImage for the alpha")
        return (image[..., index],)


class ImageColorToMask(Node):
    """A mask of the pixels of one exact colour (``color`` is 0xRRGGBB, compared in 8-bit)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "ImageColorToMask", "mask", _NODES_MASK
    INPUTS = {"image": LINK("IMAGE"), "color": INT(0, 0, 0xFFFFFF, 1, display="color")}
    OUTPUTS = ("MASK",)
    FUNCTION = "image_to_mask"

    def image_to_mask(self, image: Any, color: int) -> tuple[Any]:
        rgb = (image[..., :3].clamp(0, 1) * 255.0).round().long()
        packed = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]
        # 1 where the colour matches (ComfyUI's older releases wrote 255 there, which is not a mask value)
        return ((packed == color).float(),)


class MaskToImage(Node):
    """Shows a mask as a grey image (the mask value in all three channels)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "Convert Mask to Image", "mask", _NODES_MASK
    INPUTS = {"mask": _MASK}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "mask_to_image"

    def mask_to_image(self, mask: Any) -> tuple[Any]:
        return (as_batch(mask)[..., None].expand(-1, -1, -1, 3),)


class SolidMask(Node):
    """A mask of one value everywhere."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "SolidMask", "mask", _NODES_MASK
    INPUTS = {"value": FLOAT(1.0, 0.0, 1.0, 0.01), "width": INT(512, 1, MAX_RESOLUTION, 1),
              "height": INT(512, 1, MAX_RESOLUTION, 1)}
    OUTPUTS = ("MASK",)
    FUNCTION = "solid"

    def solid(self, value: float, width: int, height: int) -> tuple[Any]:
        import torch

        return (torch.full((1, height, width), value, dtype=torch.float32),)


class InvertMask(Node):
    """Inverts a mask (1 - mask)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "InvertMask", "mask", _NODES_MASK
    INPUTS = {"mask": _MASK}
    OUTPUTS = ("MASK",)
    FUNCTION = "invert"

    def invert(self, mask: Any) -> tuple[Any]:
        return (1.0 - mask,)


class CropMask(Node):
    """Cuts a width x height rectangle out of a mask at (x, y)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "CropMask", "mask", _NODES_MASK
    INPUTS = {"mask": _MASK, "x": INT(0, 0, MAX_RESOLUTION, 1), "y": INT(0, 0, MAX_RESOLUTION, 1),
              "width": INT(512, 1, MAX_RESOLUTION, 1), "height": INT(512, 1, MAX_RESOLUTION, 1)}
    OUTPUTS = ("MASK",)
    FUNCTION = "crop"

    def crop(self, mask: Any, x: int, y: int, width: int, height: int) -> tuple[Any]:
        return (as_batch(mask)[:, y:y + height, x:x + width],)


_MASK_OPS = ("multiply", "add", "subtract", "and", "or", "xor")


class MaskComposite(Node):
    """Combines the source mask into the destination at (x, y): multiply, add, subtract, and, or, xor; clamped."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "MaskComposite", "mask", _NODES_MASK
    INPUTS = {"destination": _MASK, "source": _MASK, "x": INT(0, 0, MAX_RESOLUTION, 1),
              "y": INT(0, 0, MAX_RESOLUTION, 1), "operation": COMBO(_MASK_OPS)}
    OUTPUTS = ("MASK",)
    FUNCTION = "combine"

    def combine(self, destination: Any, source: Any, x: int, y: int, operation: str) -> tuple[Any]:
        import torch

        out = as_batch(destination).clone()
        source = as_batch(source).to(out)
        if source.shape[0] not in (1, out.shape[0]):
            raise shape_error("MaskComposite", "source", source.shape, out.shape, "give one source mask or one per "
                              "destination mask")
        bottom, right = min(y + source.shape[-2], out.shape[-2]), min(x + source.shape[-1], out.shape[-1])
        if bottom <= y or right <= x:  # pasted entirely off the destination
            return (out.clamp(0.0, 1.0),)
        src = source[:, :bottom - y, :right - x]
        dst = out[:, y:bottom, x:right]
        if operation in ("and", "or", "xor"):  # on masks rounded to 0/1
            op = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}[operation]
            combined = op(dst.round().bool(), src.round().bool()).to(out.dtype)
        else:
            combined = {"multiply": dst * src, "add": dst + src, "subtract": dst - src}[operation]
        out[:, y:bottom, x:right] = combined
        return (out.clamp(0.0, 1.0),)


class GrowMask(Node):
    """Grows (expand > 0) or shrinks (expand < 0) a mask one pixel per step; tapered corners grow as a diamond."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "GrowMask", "mask", _NODES_MASK
    INPUTS = {"mask": _MASK, "expand": INT(0, -MAX_RESOLUTION, MAX_RESOLUTION, 1),
              "tapered_corners": BOOLEAN(True)}
    OUTPUTS = ("MASK",)
    FUNCTION = "expand_mask"

    def expand_mask(self, mask: Any, expand: int, tapered_corners: bool) -> tuple[Any]:
        import numpy as np
        import torch
        from scipy import ndimage

        # scipy's grey morphology, as ComfyUI: a 3x3 footprint (a cross when tapered), its 'reflect' border (an
        # all-ones mask does not shrink from the image edge); one step per pixel of expand
        c = 0 if tapered_corners else 1
        footprint = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
        step = ndimage.grey_dilation if expand > 0 else ndimage.grey_erosion
        out = []
        for item in as_batch(mask).detach().cpu().float().numpy():
            for _ in range(abs(expand)):
                item = step(item, footprint=footprint)
            out.append(torch.from_numpy(item))
        return (torch.stack(out).to(mask.device, mask.dtype),)


class FeatherMask(Node):
    """Fades a mask linearly to 0 over the given number of pixels at each edge (ComfyUI 0.3.64's ramps)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "FeatherMask", "mask", _NODES_MASK
    INPUTS = {"mask": _MASK, "left": INT(0, 0, MAX_RESOLUTION, 1), "top": INT(0, 0, MAX_RESOLUTION, 1),
              "right": INT(0, 0, MAX_RESOLUTION, 1), "bottom": INT(0, 0, MAX_RESOLUTION, 1)}
    OUTPUTS = ("MASK",)
    FUNCTION = "feather"

    def feather(self, mask: Any, left: int, top: int, right: int, bottom: int) -> tuple[Any]:
        import torch

        out = as_batch(mask)
        h, w = out.shape[-2:]

        def ramp(size: int, start: int, end: int) -> Any:
            # the k-th pixel from the left/top edge (k = 0, 1, ...) is scaled by (k + 1) / start. ComfyUI 0.3.64
            # indexes the right/bottom ramp as pixel -k, so its first step (-0) lands on the LEFT/TOP pixel and
            # the ramp is shifted by one: pixel -k gets (k + 1) / end and the last pixel 2 / end. Kept for
            # identical results; ComfyUI fixed it after 0.3.64 (Comfy-Org/ComfyUI#12881: pixel -(k + 1)).
            weight = torch.ones(size, dtype=out.dtype, device=out.device)
            start, end = min(start, size), min(end, size)
            for k in range(start):
                weight[k] *= (k + 1) / start
            for k in range(end):
                weight[-k] *= (k + 1) / end
            return weight

        return (out * ramp(h, top, bottom)[:, None] * ramp(w, left, right)[None, :],)


class ThresholdMask(Node):
    """A binary mask: 1 where the mask is above the value."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "ThresholdMask", "mask", _NODES_MASK
    INPUTS = {"mask": _MASK, "value": FLOAT(0.5, 0.0, 1.0, 0.01)}
    OUTPUTS = ("MASK",)
    FUNCTION = "image_to_mask"

    def image_to_mask(self, mask: Any, value: float) -> tuple[Any]:
        return ((mask > value).float(),)


class MaskPreview(PreviewImage):
    """Shows a mask as a grey image without keeping it (temp folder)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "MaskPreview", "mask", _NODES_MASK
    INPUTS = {"mask": _MASK}
    FUNCTION = "execute"

    def execute(self, mask: Any, prompt: Any = None, extra_pnginfo: dict[str, Any] | None = None) -> dict:
        images = as_batch(mask)[..., None].expand(-1, -1, -1, 3)
        return save_png(self.engine, images, "ComfyUI" + self.suffix, self.engine.folders.temp, "temp", 4, prompt,
                        extra_pnginfo)


class ImageCompositeMasked(Node):
    """Pastes the source image onto the destination at (x, y), through the mask if given (resized to the source)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "ImageCompositeMasked", "image", _NODES_MASK
    INPUTS = {"destination": LINK("IMAGE"), "source": LINK("IMAGE"), "x": INT(0, 0, MAX_RESOLUTION, 1),
              "y": INT(0, 0, MAX_RESOLUTION, 1), "resize_source": BOOLEAN(False)}
    OPTIONAL = {"mask": _MASK}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "composite"

    def composite(self, destination: Any, source: Any, x: int, y: int, resize_source: bool,
                  mask: Any = None) -> tuple[Any]:
        destination, source = alpha_fix(destination, source)
        out = composite(destination.clone().movedim(-1, 1), source.movedim(-1, 1), x, y, mask, 1, resize_source)
        return (out.movedim(1, -1),)
