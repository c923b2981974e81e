"""Conditioning nodes: CLIPTextEncode, CLIPSetLastLayer, ConditioningCombine, ConditioningSetArea.

CONDITIONING is ComfyUI's list ``[[cond [B, tokens, dim], {"pooled_output": tensor | None, ...}], ...]``.
"""

from __future__ import annotations

from typing import Any

from .base import Node


class CLIPTextEncode(Node):
    """Encode a prompt (with ComfyUI's ``(word:1.2)`` weighting and 75-token chunks)."""

    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)

    def encode(self, clip: Any, text: str) -> tuple[list]:
        if clip is None:
            raise RuntimeError("clip input is invalid: None. If the clip comes from a checkpoint loader, the "
                               "checkpoint has no text encoder; load one that does.")
        cond, pooled = self.engine.call_with(lambda: clip.encode(text), clip)
        return ([[cond, {"pooled_output": pooled}]],)


class CLIPSetLastLayer(Node):
    """Use the text encoder up to an earlier layer (-2 = "clip skip 2")."""

    FUNCTION = "set_last_layer"
    RETURN_TYPES = ("CLIP",)

    def set_last_layer(self, clip: Any, stop_at_clip_layer: int) -> tuple[Any]:
        clip = clip.clone()
        clip.set_last_layer(stop_at_clip_layer)
        return (clip,)


class ConditioningCombine(Node):
    """Both conditionings; the sampler averages their predictions (not a token concat)."""

    FUNCTION = "combine"
    RETURN_TYPES = ("CONDITIONING",)

    def combine(self, conditioning_1: list, conditioning_2: list) -> tuple[list]:
        return (conditioning_1 + conditioning_2,)


class ConditioningSetArea(Node):
    """Restrict a conditioning to a rectangle (in pixels, stored in latent units like ComfyUI)."""

    FUNCTION = "append"
    RETURN_TYPES = ("CONDITIONING",)

    def append(self, conditioning: list, width: int, height: int, x: int, y: int, strength: float) -> tuple[list]:
        out = []
        for cond, extra in conditioning:
            extra = dict(extra)
            extra["area"] = (height // 8, width // 8, y // 8, x // 8)
            extra["strength"] = strength
            extra["set_area_to_bounds"] = False
            out.append([cond, extra])
        return (out,)
