"""Latent edits: LatentComposite, LatentCompositeMasked, LatentBlend, RepeatLatentBatch, LatentFromBatch,
LatentCrop, LatentFlip, LatentRotate and SetLatentNoiseMask.

LATENT is ComfyUI's dict ``{"samples": [B, C, H/8, W/8], "noise_mask"?: [B|1, 1, h, w], "batch_index"?: [int]}``.
Positions and sizes are given in pixels and divided by 8, as in ComfyUI. Each node returns a new dict that keeps
the other keys of its (first) input.
"""

from __future__ import annotations

from typing import Any

from .base import BOOLEAN, COMBO, FLOAT, INT, LINK, MAX_RESOLUTION, Node
from .mask import as_batch, composite, shape_error

_LATENT = LINK("LATENT")


def _check_pasteable(node: str, target: Any, source: Any, what: str) -> None:
    """Raise where ComfyUI's paste would fail: another channel count, or a batch it cannot broadcast."""
    if source.shape[1] != target.shape[1] or source.shape[0] not in (1, target.shape[0]):
        raise shape_error(node, what, source.shape, target.shape, "give latents of the same model (same channel "
                          "count) and the same batch size (or a batch of 1), e.g. with RepeatLatentBatch")


class LatentComposite(Node):
    """Pastes samples_from onto samples_to at (x, y), with an optional linear feather at inner edges."""

    DISPLAY, CATEGORY = "Latent Composite", "latent"
    INPUTS = {"samples_to": _LATENT, "samples_from": _LATENT, "x": INT(0, 0, MAX_RESOLUTION, 8),
              "y": INT(0, 0, MAX_RESOLUTION, 8), "feather": INT(0, 0, MAX_RESOLUTION, 8)}
    OUTPUTS = ("LATENT",)
    FUNCTION = "composite"

    def composite(self, samples_to: dict, samples_from: dict, x: int, y: int, feather: int) -> tuple[dict]:
        import torch

        x, y, feather = x // 8, y // 8, feather // 8
        target, source = samples_to["samples"], samples_from["samples"]
        _check_pasteable("LatentComposite", target, source, "samples_from")
        out = target.clone()
        source = source[:, :, :max(0, target.shape[2] - y), :max(0, target.shape[3] - x)].to(out)
        h, w = source.shape[2:]
        region = out[:, :, y:y + h, x:x + w]
        if feather == 0:
            region[...] = source
        else:
            # the weight ramps (t + 1) / feather over the source edges that lie inside the target
            mask = torch.ones_like(source)
            for t in range(feather):
                rate = (t + 1) / feather
                if y != 0 and t < h:
                    mask[:, :, t] *= rate
                if y + h < target.shape[2] and t < h:
                    mask[:, :, h - 1 - t] *= rate
                if x != 0 and t < w:
                    mask[:, :, :, t] *= rate
                if x + w < target.shape[3] and t < w:
                    mask[:, :, :, w - 1 - t] *= rate
            region[...] = source * mask + region * (1.0 - mask)
        return ({**samples_to, "samples": out},)


class LatentCompositeMasked(Node):
    """Pastes the source latent onto the destination at (x, y), through the mask if given (resized to the source)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "LatentCompositeMasked", "latent", "comfy_extras.nodes_mask"
    INPUTS = {"destination": _LATENT, "source": _LATENT, "x": INT(0, 0, MAX_RESOLUTION, 8),
              "y": INT(0, 0, MAX_RESOLUTION, 8), "resize_source": BOOLEAN(False)}
    OPTIONAL = {"mask": LINK("MASK")}
    OUTPUTS = ("LATENT",)
    FUNCTION = "composite"

    def composite(self, destination: dict, source: dict, x: int, y: int, resize_source: bool,
                  mask: Any = None) -> tuple[dict]:
        target = destination["samples"]
        if source["samples"].shape[1] != target.shape[1]:
            raise shape_error("LatentCompositeMasked", "source", source["samples"].shape, target.shape,
                              "give latents of the same model (same channel count)")
        out = composite(target.clone(), source["samples"], x, y, mask, 8, resize_source)
        return ({**destination, "samples": out},)


class LatentBlend(Node):
    """Mixes two latents: samples1 x blend_factor + samples2 x (1 - blend_factor); samples2 is resized to fit."""

    DISPLAY, CATEGORY = "Latent Blend", "_for_testing"
    INPUTS = {"samples1": _LATENT, "samples2": _LATENT, "blend_factor": FLOAT(0.5, 0, 1, 0.01)}
    OUTPUTS = ("LATENT",)
    FUNCTION = "blend"

    def blend(self, samples1: dict, samples2: dict, blend_factor: float) -> tuple[dict]:
        from ..engine.images import common_upscale

        a, b = samples1["samples"], samples2["samples"]
        if a.shape != b.shape:
            b = common_upscale(b, a.shape[3], a.shape[2], "bicubic", "center")
        _check_pasteable("LatentBlend", a, b, "samples2")
        return ({**samples1, "samples": a * blend_factor + b.to(a) * (1 - blend_factor)},)


class RepeatLatentBatch(Node):
    """Repeats a latent batch ``amount`` times (noise masks and batch indices follow)."""

    DISPLAY, CATEGORY = "Repeat Latent Batch", "latent/batch"
    INPUTS = {"samples": _LATENT, "amount": INT(1, 1, 64)}
    OUTPUTS = ("LATENT",)
    FUNCTION = "repeat"

    def repeat(self, samples: dict, amount: int) -> tuple[dict]:
        x = samples["samples"]
        out = {**samples, "samples": x.repeat((amount,) + (1,) * (x.ndim - 1))}
        masks = samples.get("noise_mask")
        if masks is not None and masks.shape[0] > 1:  # a single mask already serves every item
            out["noise_mask"] = masks.repeat((amount,) + (1,) * (masks.ndim - 1))
        if "batch_index" in samples:
            index = list(samples["batch_index"])
            offset = max(index) - min(index) + 1
            out["batch_index"] = index + [i + k * offset for k in range(1, amount) for i in index]
        return (out,)


class LatentFromBatch(Node):
    """Takes ``length`` items of a latent batch from ``batch_index`` (their noise stays that of the whole batch)."""

    DISPLAY, CATEGORY = "Latent From Batch", "latent/batch"
    INPUTS = {"samples": _LATENT, "batch_index": INT(0, 0, 63), "length": INT(1, 1, 64)}
    OUTPUTS = ("LATENT",)
    FUNCTION = "frombatch"

    def frombatch(self, samples: dict, batch_index: int, length: int) -> tuple[dict]:
        x = samples["samples"]
        start = min(x.shape[0] - 1, batch_index)
        length = min(x.shape[0] - start, length)
        out = {**samples, "samples": x[start:start + length].clone()}
        masks = samples.get("noise_mask")
        if masks is not None:
            if masks.shape[0] > 1:
                if masks.shape[0] < x.shape[0]:
                    masks = masks.repeat(-(-x.shape[0] // masks.shape[0]), 1, 1, 1)[:x.shape[0]]
                masks = masks[start:start + length]
            out["noise_mask"] = masks.clone()
        # batch_index keeps each item's noise: item k of the slice gets the noise it had in the whole batch
        index = samples.get("batch_index")
        out["batch_index"] = list(range(start, start + length)) if index is None else index[start:start + length]
        return (out,)


class LatentCrop(Node):
    """Cuts a width x height rectangle (pixels) out of a latent at (x, y)."""

    DISPLAY, CATEGORY = "Crop Latent", "latent/transform"
    INPUTS = {"samples": _LATENT, "width": INT(512, 64, MAX_RESOLUTION, 8), "height": INT(512, 64, MAX_RESOLUTION, 8),
              "x": INT(0, 0, MAX_RESOLUTION, 8), "y": INT(0, 0, MAX_RESOLUTION, 8)}
    OUTPUTS = ("LATENT",)
    FUNCTION = "crop"

    def crop(self, samples: dict, width: int, height: int, x: int, y: int) -> tuple[dict]:
        s = samples["samples"]
        # ComfyUI keeps at least 8 latent pixels (64 px) after the offset
        x, y = min(x // 8, s.shape[3] - 8), min(y // 8, s.shape[2] - 8)
        return ({**samples, "samples": s[:, :, y:y + height // 8, x:x + width // 8]},)


class LatentFlip(Node):
    """Flips a latent upside down (x-axis) or left to right (y-axis)."""

    DISPLAY, CATEGORY = "Flip Latent", "latent/transform"
    INPUTS = {"samples": _LATENT, "flip_method": COMBO(("x-axis: vertically", "y-axis: horizontally"))}
    OUTPUTS = ("LATENT",)
    FUNCTION = "flip"

    def flip(self, samples: dict, flip_method: str) -> tuple[dict]:
        import torch

        dim = 2 if flip_method.startswith("x") else 3
        return ({**samples, "samples": torch.flip(samples["samples"], dims=[dim])},)


class LatentRotate(Node):
    """Rotates a latent clockwise by 90, 180 or 270 degrees."""

    DISPLAY, CATEGORY = "Rotate Latent", "latent/transform"
    INPUTS = {"samples": _LATENT, "rotation": COMBO(("none", "90 degrees", "180 degrees", "270 degrees"))}
    OUTPUTS = ("LATENT",)
    FUNCTION = "rotate"

    def rotate(self, samples: dict, rotation: str) -> tuple[dict]:
        import torch

        turns = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
        return ({**samples, "samples": torch.rot90(samples["samples"], k=turns, dims=[3, 2])},)


class SetLatentNoiseMask(Node):
    """Limits sampling to the masked region of a latent (1 = repaint); the mask is resized to the latent."""

    DISPLAY, CATEGORY = "Set Latent Noise Mask", "latent/inpaint"
    INPUTS = {"samples": _LATENT, "mask": LINK("MASK")}
    OUTPUTS = ("LATENT",)
    FUNCTION = "set_mask"

    def set_mask(self, samples: dict, mask: Any) -> tuple[dict]:
        return ({**samples, "noise_mask": as_batch(mask)[:, None]},)
