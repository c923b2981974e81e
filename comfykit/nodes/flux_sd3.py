"""Nodes of the flow-matching workflows (FLUX.1, SD3): their latent, model sampling, guidance and references.

EmptySD3LatentImage, ModelSamplingFlux, ModelSamplingSD3, ModelSamplingAuraFlow, FluxGuidance, ReferenceLatent,
FluxKontextImageScale. A ModelSampling node returns a clone of the MODEL (the weights are shared) whose
``model_sampling`` (sigma table and prediction) is replaced.
"""

from __future__ import annotations

from typing import Any

from .base import COMBO, FLOAT, INT, LINK, MAX_RESOLUTION, STRING, Node
from .conditioning import set_options

_ADVANCED = "comfy_extras.nodes_model_advanced"

#: (width, height) FLUX.1 Kontext was trained at; FluxKontextImageScale picks the one closest in aspect ratio
KONTEXT_RESOLUTIONS = ((672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
                       (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
                       (1456, 720), (1504, 688), (1568, 672))


class EmptySD3LatentImage(Node):
    """An all-zero 16-channel latent batch for SD3 and FLUX.1 text-to-image."""

    DISPLAY, CATEGORY, PYTHON_MODULE = None, "latent/sd3", "comfy_extras.nodes_sd3"
    INPUTS = {"width": INT(1024, 16, MAX_RESOLUTION, 16, "Image width in pixels."),
              "height": INT(1024, 16, MAX_RESOLUTION, 16, "Image height in pixels."),
              "batch_size": INT(1, 1, 4096, tip="Images per batch.")}
    OUTPUTS = ("LATENT",)
    FUNCTION = "generate"

    def generate(self, width: int, height: int, batch_size: int) -> tuple[dict[str, Any]]:
        import torch

        return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8])},)


def with_model_sampling(model: Any, model_sampling: Any) -> Any:
    """A clone of ``model`` (shared weights) sampling with ``model_sampling``."""
    if not hasattr(model, "clone"):
        raise ValueError(f"model must be a MODEL (a loaded diffusion model), got {type(model).__name__}")
    patched = model.clone()
    patched.model_sampling = model_sampling
    return patched


class ModelSamplingFlux(Node):
    """Sets FLUX.1's flow schedule with the shift for an image size (base_shift at 256², max_shift at 1024²)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "ModelSamplingFlux", "advanced/model", _ADVANCED
    INPUTS = {"model": LINK("MODEL", "Model to patch."),
              "max_shift": FLOAT(1.15, 0.0, 100.0, 0.01, "Shift at 4096 image tokens (1024x1024)."),
              "base_shift": FLOAT(0.5, 0.0, 100.0, 0.01, "Shift at 256 image tokens (256x256)."),
              "width": INT(1024, 16, MAX_RESOLUTION, 8, "Image width in pixels."),
              "height": INT(1024, 16, MAX_RESOLUTION, 8, "Image height in pixels.")}
    OUTPUTS = ("MODEL",)
    FUNCTION = "patch"

    def patch(self, model: Any, max_shift: float, base_shift: float, width: int, height: int) -> tuple[Any]:
        from ..engine.sampling import schedulers

        shift = schedulers.flux_shift(width, height, base_shift, max_shift)
        return (with_model_sampling(model, schedulers.ModelSamplingFlux(shift=shift)),)


class ModelSamplingSD3(Node):
    """Sets SD3's shifted flow schedule (shift 3.0 is SD3's own; higher spends more steps at high noise)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "ModelSamplingSD3", "advanced/model", _ADVANCED
    INPUTS = {"model": LINK("MODEL", "Model to patch."),
              "shift": FLOAT(3.0, 0.0, 100.0, 0.01, "Schedule shift.")}
    OUTPUTS = ("MODEL",)
    FUNCTION = "patch"

    def patch(self, model: Any, shift: float) -> tuple[Any]:
        from ..engine.sampling.schedulers import ModelSamplingDiscreteFlow

        return (with_model_sampling(model, ModelSamplingDiscreteFlow(shift=shift, multiplier=1000)),)


class ModelSamplingAuraFlow(Node):
    """Sets AuraFlow's shifted flow schedule (SD3's, with timesteps in 0..1 instead of 0..1000)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "ModelSamplingAuraFlow", "advanced/model", _ADVANCED
    INPUTS = {"model": LINK("MODEL", "Model to patch."),
              "shift": FLOAT(1.73, 0.0, 100.0, 0.01, "Schedule shift.")}
    OUTPUTS = ("MODEL",)
    FUNCTION = "patch_aura"

    def patch_aura(self, model: Any, shift: float) -> tuple[Any]:
        from ..engine.sampling.schedulers import ModelSamplingDiscreteFlow

        return (with_model_sampling(model, ModelSamplingDiscreteFlow(shift=shift, multiplier=1.0)),)


class FluxGuidance(Node):
    """Sets the distilled guidance strength FLUX.1 dev reads."""

    DISPLAY, CATEGORY, PYTHON_MODULE = None, "advanced/conditioning/flux", "comfy_extras.nodes_flux"
    INPUTS = {"conditioning": LINK("CONDITIONING", "Conditioning to set the guidance on."),
              "guidance": FLOAT(3.5, 0.0, 100.0, 0.1, "Guidance strength.")}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "append"

    def append(self, conditioning: list, guidance: float) -> tuple[list]:
        return (set_options(conditioning, guidance=guidance),)


class ReferenceLatent(Node):
    """Adds a reference image latent for an edit model (FLUX.1 Kontext); chain several for several references."""

    DISPLAY, CATEGORY, PYTHON_MODULE = None, "advanced/conditioning/edit_models", "comfy_extras.nodes_edit_model"
    INPUTS = {"conditioning": LINK("CONDITIONING", "Conditioning to add the reference to.")}
    OPTIONAL = {"latent": LINK("LATENT", "Reference latent (VAE-encoded image); none leaves the input as is.")}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "append"

    def append(self, conditioning: list, latent: dict[str, Any] | None = None) -> tuple[list]:
        if latent is None:
            return (conditioning,)
        return ([[cond, {**opts, "reference_latents": list(opts.get("reference_latents") or []) + [latent["samples"]]}]
                 for cond, opts in conditioning],)


class FluxKontextImageScale(Node):
    """Resizes an image to the FLUX.1 Kontext resolution closest in aspect ratio (centre crop, Lanczos)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = None, "advanced/conditioning/flux", "comfy_extras.nodes_flux"
    INPUTS = {"image": LINK("IMAGE", "Image to resize.")}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "scale"

    def scale(self, image: Any) -> tuple[Any]:
        from ..engine.images import common_upscale

        aspect = image.shape[2] / image.shape[1]
        _, width, height = min((abs(aspect - w / h), w, h) for w, h in KONTEXT_RESOLUTIONS)
        return (common_upscale(image.movedim(-1, 1), width, height, "lanczos", "center").movedim(1, -1),)


def _encode_towers(node: Node, clip: Any, *texts: Any) -> tuple[Any, Any]:
    if clip is None or not hasattr(clip, "encode_towers"):
        raise RuntimeError(f"{type(node).__name__} needs the text encoder of its model family (got {clip!r}); load "
                           "it with the family's CLIP loader (DualCLIPLoader type flux, TripleCLIPLoader) or its "
                           "checkpoint")
    return node.call_with(lambda: clip.encode_towers(*texts), clip)


class CLIPTextEncodeFlux(Node):
    """Encodes a FLUX.1 prompt: one text for CLIP-L (pooled), one for T5-XXL (tokens), and the guidance."""

    DISPLAY, CATEGORY, PYTHON_MODULE = None, "advanced/conditioning/flux", "comfy_extras.nodes_flux"
    INPUTS = {"clip": LINK("CLIP"), "clip_l": STRING(multiline=True), "t5xxl": STRING(multiline=True),
              "guidance": FLOAT(3.5, 0.0, 100.0, 0.1)}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "encode"

    def encode(self, clip: Any, clip_l: str, t5xxl: str, guidance: float) -> tuple[list]:
        cond, pooled = _encode_towers(self, clip, clip_l, t5xxl)
        return ([[cond, {"pooled_output": pooled, "guidance": guidance}]],)


class CLIPTextEncodeSD3(Node):
    """Encodes an SD3/SD3.5 prompt with one text per text encoder (CLIP-L, CLIP-G, T5-XXL)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = None, "advanced/conditioning", "comfy_extras.nodes_sd3"
    INPUTS = {"clip": LINK("CLIP"), "clip_l": STRING(multiline=True), "clip_g": STRING(multiline=True),
              "t5xxl": STRING(multiline=True),
              "empty_padding": COMBO(("none", "empty_prompt"), "What an empty text encodes to.")}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "encode"

    def encode(self, clip: Any, clip_l: str, clip_g: str, t5xxl: str, empty_padding: str) -> tuple[list]:
        cond, pooled = _encode_towers(self, clip, clip_l, clip_g, t5xxl, empty_padding)
        return ([[cond, {"pooled_output": pooled}]],)
