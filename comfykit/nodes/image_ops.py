"""Image transform nodes: ImageStitch."""

from __future__ import annotations

from typing import Any

from .base import BOOLEAN, COMBO, INT, LINK, Node

_COLORS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0),
           "blue": (0.0, 0.0, 1.0)}


def _fill(batch: int, height: int, width: int, channels: int, color: tuple[float, ...], like: Any) -> Any:
    import torch

    value = torch.tensor(list(color) + [1.0] * (channels - 3), dtype=like.dtype)[:channels]
    return value.expand(batch, height, width, channels).clone()


class ImageStitch(Node):
    """Stitches image2 to image1's right, bottom, left or top, optionally resized to match and with a spacer."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "Image Stitch", "image/transform", "comfy_extras.nodes_images"
    INPUTS = {"image1": LINK("IMAGE"),
              "direction": COMBO(("right", "down", "left", "up"), default="right"),
              "match_image_size": BOOLEAN(True, "Resize image2 to image1's height (left/right) or width (up/down)."),
              "spacing_width": INT(0, 0, 1024, 2, "Width of the spacer between the images."),
              "spacing_color": COMBO(tuple(_COLORS), default="white")}
    OPTIONAL = {"image2": LINK("IMAGE")}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "stitch"

    def stitch(self, image1: Any, direction: str, match_image_size: bool, spacing_width: int, spacing_color: str,
               image2: Any = None) -> tuple[Any]:
        import torch

        from ..engine.images import common_upscale

        if image2 is None:
            return (image1,)
        batch = max(image1.shape[0], image2.shape[0])
        image1, image2 = (im.repeat(-(-batch // im.shape[0]), 1, 1, 1)[:batch] for im in (image1, image2))
        channels = max(image1.shape[-1], image2.shape[-1])
        image1, image2 = (torch.cat([im, torch.ones_like(im[..., :1]).expand(*im.shape[:-1], channels - im.shape[-1])],
                                    dim=-1) if im.shape[-1] < channels else im for im in (image1, image2))
        horizontal = direction in ("left", "right")
        h1, w1 = image1.shape[1:3]
        h2, w2 = image2.shape[1:3]
        if match_image_size:
            size = (round(w2 * h1 / h2), h1) if horizontal else (w1, round(h2 * w1 / w2))
            image2 = common_upscale(image2.movedim(-1, 1), *size, "lanczos", "disabled").movedim(1, -1)
        else:  # pad the smaller one, centred; the padding is the spacer colour when that is white or black
            pad_color = _COLORS[spacing_color] if spacing_color in ("white", "black") else _COLORS["black"]
            axis = 1 if horizontal else 2
            target = max(image1.shape[axis], image2.shape[axis])
            image1, image2 = (self._pad(im, axis, target, pad_color) for im in (image1, image2))
        parts = [image1, image2] if direction in ("right", "down") else [image2, image1]
        if spacing_width:
            b, h, w, c = parts[0].shape
            spacer = _fill(b, h, spacing_width, c, _COLORS[spacing_color], parts[0]) if horizontal else \
                _fill(b, spacing_width, w, c, _COLORS[spacing_color], parts[0])
            parts.insert(1, spacer)
        return (torch.cat(parts, dim=2 if horizontal else 1),)

    @staticmethod
    def _pad(image: Any, axis: int, target: int, color: tuple[float, ...]) -> Any:

        missing = target - image.shape[axis]
        if missing <= 0:
            return image
        before = missing // 2
        shape = list(image.shape)
        shape[axis] = target
        out = _fill(shape[0], shape[1], shape[2], shape[3], color, image)
        index = [slice(None)] * 4
        index[axis] = slice(before, before + image.shape[axis])
        out[tuple(index)] = image
        return out if out.dtype == image.dtype else out.to(image.dtype)
