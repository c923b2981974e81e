"""Conditioning mixing and regions: ConditioningAverage, ConditioningConcat, ConditioningSetMask,
ConditioningSetAreaPercentage, ConditioningSetAreaStrength.

The region nodes only set options on each entry (``mask``, ``mask_strength``, ``set_area_to_bounds``, ``area``,
``strength``); the sampler's denoiser (``comfykit.engine.sampling.guiders``) resizes masks to the latent and
turns areas and masks into weights, as ComfyUI does.
"""

from __future__ import annotations

import logging
from typing import Any

from .base import COMBO, FLOAT, LINK, Node
from .conditioning import set_options

_COND = LINK("CONDITIONING")
_STRENGTH = FLOAT(1.0, 0.0, 10.0, 0.01)
log = logging.getLogger(__name__)


def _first(node: str, conditioning_from: list) -> Any:
    if not conditioning_from:
        raise ValueError(f"{node}: conditioning_from is empty; connect a CLIPTextEncode output")
    if len(conditioning_from) > 1:  # ComfyUI warns and uses the first entry too
        log.warning("%s: conditioning_from has %d entries; only the first is used", node, len(conditioning_from))
    return conditioning_from[0]


def _check_width(node: str, to: Any, source: Any) -> None:
    if to.shape[-1] != source.shape[-1]:
        raise ValueError(f"{node}: conditioning_to has {to.shape[-1]}-wide tokens but conditioning_from "
                         f"{source.shape[-1]}-wide ones (shapes {list(to.shape)} and {list(source.shape)}); encode "
                         "both prompts with the same text encoder")


class ConditioningAverage(Node):
    """Interpolates the tokens (and pooled output) of conditioning_to towards conditioning_from's first entry."""

    DISPLAY, CATEGORY = "ConditioningAverage", "conditioning"
    INPUTS = {"conditioning_to": _COND, "conditioning_from": _COND,
              "conditioning_to_strength": FLOAT(1.0, 0.0, 1.0, 0.01)}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "addWeighted"

    def addWeighted(self, conditioning_to: list, conditioning_from: list,  # noqa: N802 - ComfyUI's name
                    conditioning_to_strength: float) -> tuple[list]:
        import torch

        source, source_opts = _first("ConditioningAverage", conditioning_from)
        pooled_from = source_opts.get("pooled_output")
        w = conditioning_to_strength
        out = []
        for cond, opts in conditioning_to:
            _check_width("ConditioningAverage", cond, source)
            # conditioning_from is cut or zero-padded to conditioning_to's token count
            t0 = source[:, :cond.shape[1]]
            if t0.shape[1] < cond.shape[1]:
                pad = torch.zeros((t0.shape[0], cond.shape[1] - t0.shape[1], cond.shape[2]), dtype=t0.dtype,
                                  device=t0.device)
                t0 = torch.cat([t0, pad], dim=1)
            opts = dict(opts)
            pooled_to = opts.get("pooled_output", pooled_from)
            if pooled_from is not None and pooled_to is not None:
                opts["pooled_output"] = pooled_to * w + pooled_from * (1.0 - w)
            elif pooled_from is not None:
                opts["pooled_output"] = pooled_from
            out.append([cond * w + t0.to(cond) * (1.0 - w), opts])
        return (out,)


class ConditioningConcat(Node):
    """Appends conditioning_from's tokens (its first entry) after each entry's tokens, as one longer prompt."""

    DISPLAY, CATEGORY = "Conditioning (Concat)", "conditioning"
    INPUTS = {"conditioning_to": _COND, "conditioning_from": _COND}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "concat"

    def concat(self, conditioning_to: list, conditioning_from: list) -> tuple[list]:
        import torch

        source = _first("ConditioningConcat", conditioning_from)[0]
        out = []
        for cond, opts in conditioning_to:
            _check_width("ConditioningConcat", cond, source)
            if source.shape[0] not in (1, cond.shape[0]) and cond.shape[0] != 1:
                raise ValueError(f"ConditioningConcat: conditioning_from has a batch of {source.shape[0]} but "
                                 f"conditioning_to {cond.shape[0]}; use prompts encoded one at a time")
            batch = max(cond.shape[0], source.shape[0])
            out.append([torch.cat((cond.expand(batch, -1, -1), source.to(cond).expand(batch, -1, -1)), 1),
                        dict(opts)])
        return (out,)


class ConditioningSetMask(Node):
    """Applies a conditioning only where the mask is set (resized to the latent), weighted by strength.

    ``set_cond_area`` "mask bounds" runs the conditioning on the mask's bounding box only (faster, and the model
    sees the region as a whole picture); "default" runs it on the whole latent.
    """

    DISPLAY, CATEGORY = "Conditioning (Set Mask)", "conditioning"
    INPUTS = {"conditioning": _COND, "mask": LINK("MASK"), "strength": _STRENGTH,
              "set_cond_area": COMBO(("default", "mask bounds"))}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "append"

    def append(self, conditioning: list, mask: Any, strength: float, set_cond_area: str) -> tuple[list]:
        if mask.ndim < 3:
            mask = mask.unsqueeze(0)
        return (set_options(conditioning, mask=mask, set_area_to_bounds=set_cond_area != "default",
                            mask_strength=strength),)


class ConditioningSetAreaPercentage(Node):
    """Applies a conditioning to one rectangle given as fractions of the image (0..1), with a strength."""

    DISPLAY, CATEGORY = "Conditioning (Set Area with Percentage)", "conditioning"
    INPUTS = {"conditioning": _COND, "width": FLOAT(1.0, 0, 1.0, 0.01), "height": FLOAT(1.0, 0, 1.0, 0.01),
              "x": FLOAT(0, 0, 1.0, 0.01), "y": FLOAT(0, 0, 1.0, 0.01), "strength": _STRENGTH}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "append"

    def append(self, conditioning: list, width: float, height: float, x: float, y: float,
               strength: float) -> tuple[list]:
        return (set_options(conditioning, area=("percentage", height, width, y, x), strength=strength,
                            set_area_to_bounds=False),)


class ConditioningSetAreaStrength(Node):
    """Sets the weight of a conditioning where it overlaps others (areas, masks, combined prompts)."""

    DISPLAY, CATEGORY = "ConditioningSetAreaStrength", "conditioning"
    INPUTS = {"conditioning": _COND, "strength": _STRENGTH}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "append"

    def append(self, conditioning: list, strength: float) -> tuple[list]:
        return (set_options(conditioning, strength=strength),)
