"""Upscale-model nodes: UpscaleModelLoader and ImageUpscaleWithModel (ComfyUI's comfy_extras.nodes_upscale_model).

The model code is :mod:`comfykit.engine.models.upscale` (built-in ESRGAN-family RRDBNet, spandrel for the rest).
"""

from __future__ import annotations

from typing import Any

from .base import FILES, LINK, Node

_MODULE = "comfy_extras.nodes_upscale_model"


class UpscaleModelLoader(Node):
    """Loads an upscale model (ESRGAN, Real-ESRGAN, 4x-UltraSharp; SwinIR/HAT and others through spandrel)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "Load Upscale Model", "loaders", _MODULE
    INPUTS = {"model_name": FILES("upscale_models", "Upscale model file in models/upscale_models.")}
    OUTPUTS = ("UPSCALE_MODEL",)
    FUNCTION = "load_model"

    def load_model(self, model_name: str) -> tuple[Any]:
        path = self.engine.folders.get_full_path("upscale_models", model_name)
        return (self.engine.models.load_upscale_model(path),)


class ImageUpscaleWithModel(Node):
    """Upscales images with an upscale model, in overlapping tiles so memory stays bounded."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "Upscale Image (using Model)", "image/upscaling", _MODULE
    INPUTS = {"upscale_model": LINK("UPSCALE_MODEL", "The model from Load Upscale Model."),
              "image": LINK("IMAGE", "Images to upscale.")}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "upscale"

    def upscale(self, upscale_model: Any, image: Any) -> tuple[Any]:
        from ..engine.models.upscale import upscale_image

        def run() -> Any:
            return upscale_image(upscale_model, image, progress=lambda done, total: self.progress(done, total))

        return (self.call_with(run, upscale_model),)
