"""Conditioning nodes: CLIPTextEncode, CLIPSetLastLayer, ConditioningCombine, ConditioningSetArea.

CONDITIONING is ComfyUI's list ``[[cond [B, tokens, dim], {"pooled_output": tensor | None, ...}], ...]``.
"""

from __future__ import annotations

from typing import Any

from .base import FLOAT, INT, LINK, MAX_RESOLUTION, STRING, Node


class CLIPTextEncode(Node):
    """Encodes a text prompt into conditioning (ComfyUI's ``(word:1.2)`` weighting, 75-token chunks)."""

    DISPLAY, CATEGORY = "CLIP Text Encode (Prompt)", "conditioning"
    INPUTS = {"text": STRING(tip="Prompt text.", multiline=True), "clip": LINK("CLIP", "Text encoder.")}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "encode"

    def encode(self, clip: Any, text: str) -> tuple[list]:
        if clip is None:
            raise RuntimeError("clip input is invalid: None. If the clip comes from a checkpoint loader, the "
                               "checkpoint has no text encoder; load one that does.")
        cond, pooled = self.call_with(lambda: clip.encode(text), clip)
        return ([[cond, {"pooled_output": pooled}]],)


class CLIPSetLastLayer(Node):
    """Stops the text encoder at an earlier layer (-2 = "clip skip 2")."""

    DISPLAY, CATEGORY = "CLIP Set Last Layer", "conditioning"
    INPUTS = {"clip": LINK("CLIP", "Text encoder."),
              "stop_at_clip_layer": INT(-1, -24, -1, 1, "Last layer to use (-2 = 'clip skip')."), }
    OUTPUTS = ("CLIP",)
    FUNCTION = "set_last_layer"

    def set_last_layer(self, clip: Any, stop_at_clip_layer: int) -> tuple[Any]:
        clip = clip.clone()
        clip.set_last_layer(stop_at_clip_layer)
        return (clip,)


class ConditioningCombine(Node):
    """Averages the predictions of two conditionings while sampling (not a token concat)."""

    DISPLAY, CATEGORY = "Conditioning (Combine)", "conditioning"
    INPUTS = {"conditioning_1": LINK("CONDITIONING", "First conditioning."),
              "conditioning_2": LINK("CONDITIONING", "Second conditioning.")}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "combine"

    def combine(self, conditioning_1: list, conditioning_2: list) -> tuple[list]:
        return (conditioning_1 + conditioning_2,)


def set_options(conditioning: list, **options: Any) -> list:
    """A copy of ``conditioning`` with ``options`` set on every entry (ComfyUI's ``conditioning_set_values``)."""
    return [[cond, {**extra, **options}] for cond, extra in conditioning]


class ConditioningSetArea(Node):
    """Applies a conditioning to one rectangle of the image (stored in latent units, like ComfyUI)."""

    DISPLAY, CATEGORY = "Conditioning (Set Area)", "conditioning"
    INPUTS = {"conditioning": LINK("CONDITIONING", "Conditioning to restrict."),
              "width": INT(64, 64, MAX_RESOLUTION, 8, "Area width in pixels."),
              "height": INT(64, 64, MAX_RESOLUTION, 8, "Area height in pixels."),
              "x": INT(0, 0, MAX_RESOLUTION, 8, "Area left edge in pixels."),
              "y": INT(0, 0, MAX_RESOLUTION, 8, "Area top edge in pixels."),
              "strength": FLOAT(1.0, 0.0, 10.0, 0.01, "Weight of this area.")}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "append"

    def append(self, conditioning: list, width: int, height: int, x: int, y: int, strength: float) -> tuple[list]:
        return (set_options(conditioning, area=(height // 8, width // 8, y // 8, x // 8), strength=strength,
                            set_area_to_bounds=False),)
