"""ComfyUI's nodes as comfykit declares and implements them: one class per node, importable without torch.

``object_info(files)`` is the graph layer's built-in schema and ``NODE_CLASS_MAPPINGS`` the engine's registry;
both come from the same classes (see :mod:`comfykit.nodes.base` for how to declare one).
"""

from __future__ import annotations

from typing import Any

from .base import ANY_FILE, Node, declared_inputs, description, node_info
from .conditioning import CLIPSetLastLayer, CLIPTextEncode, ConditioningCombine, ConditioningSetArea
from .conditioning_mix import (
    ConditioningAverage,
    ConditioningConcat,
    ConditioningSetAreaPercentage,
    ConditioningSetAreaStrength,
    ConditioningSetMask,
)
from .conditioning_ops import (
    ConditioningSetTimestepRange,
    ConditioningZeroOut,
    InpaintModelConditioning,
    InstructPixToPixConditioning,
)
from .controlnet import (
    ControlNetApply,
    ControlNetApplyAdvanced,
    ControlNetApplySD3,
    ControlNetLoader,
    DiffControlNetLoader,
    SetUnionControlNetType,
)
from .custom_sampling import (
    BasicGuider,
    BasicScheduler,
    CFGGuider,
    DisableNoise,
    DualCFGGuider,
    KSamplerSelect,
    RandomNoise,
    SamplerCustom,
    SamplerCustomAdvanced,
    SDTurboScheduler,
)
from .differential_diffusion import DifferentialDiffusion
from .flux_sd3 import (
    CLIPTextEncodeFlux,
    CLIPTextEncodeSD3,
    EmptySD3LatentImage,
    FluxGuidance,
    FluxKontextImageScale,
    ModelSamplingAuraFlow,
    ModelSamplingFlux,
    ModelSamplingSD3,
    ReferenceLatent,
)
from .image import ImageScale, LoadImage, PreviewImage, SaveImage
from .image_edit import EmptyImage, ImageBatch, ImageCrop, ImageInvert, ImageScaleBy, ImageScaleToTotalPixels
from .image_filters import Canny, ImageBlur, ImageSharpen
from .image_load import LoadImageMask, LoadImageOutput
from .image_ops import ImageStitch
from .inpaint import ImagePadForOutpaint, VAEEncodeForInpaint
from .latent import EmptyLatentImage, LatentUpscale, LatentUpscaleBy
from .latent_ops import (
    LatentBlend,
    LatentComposite,
    LatentCompositeMasked,
    LatentCrop,
    LatentFlip,
    LatentFromBatch,
    LatentRotate,
    RepeatLatentBatch,
    SetLatentNoiseMask,
)
from .loaders import (
    CheckpointLoaderSimple,
    CLIPLoader,
    DualCLIPLoader,
    LoraLoader,
    LoraLoaderModelOnly,
    TripleCLIPLoader,
    UNETLoader,
    VAELoader,
)
from .mask import (
    CropMask,
    FeatherMask,
    GrowMask,
    ImageColorToMask,
    ImageCompositeMasked,
    ImageToMask,
    InvertMask,
    MaskComposite,
    MaskPreview,
    MaskToImage,
    SolidMask,
    ThresholdMask,
)
from .sampling import KSampler, KSamplerAdvanced, VAEDecode, VAEEncode
from .upscale import ImageUpscaleWithModel, UpscaleModelLoader
from .vae_tiled import VAEDecodeTiled, VAEEncodeTiled

NODE_CLASSES: tuple[type[Node], ...] = (
    CheckpointLoaderSimple, VAELoader, LoraLoader, LoraLoaderModelOnly,
    UNETLoader, CLIPLoader, DualCLIPLoader, TripleCLIPLoader,
    CLIPTextEncode, CLIPSetLastLayer, ConditioningCombine, ConditioningSetArea,
    EmptyLatentImage, LatentUpscale, LatentUpscaleBy,
    KSampler, KSamplerAdvanced, VAEDecode, VAEEncode,
    LoadImage, SaveImage, PreviewImage, ImageScale,
    KSamplerSelect, BasicScheduler, SDTurboScheduler, RandomNoise, DisableNoise,
    BasicGuider, CFGGuider, DualCFGGuider, SamplerCustom, SamplerCustomAdvanced,
    EmptySD3LatentImage, ModelSamplingFlux, ModelSamplingSD3, ModelSamplingAuraFlow,
    FluxGuidance, ReferenceLatent, FluxKontextImageScale, CLIPTextEncodeFlux, CLIPTextEncodeSD3, ImageStitch,
    ConditioningZeroOut, ConditioningSetTimestepRange, InstructPixToPixConditioning, InpaintModelConditioning,
    ControlNetLoader, DiffControlNetLoader, ControlNetApply, ControlNetApplyAdvanced, ControlNetApplySD3,
    SetUnionControlNetType,
    # masks, images, latents and conditioning regions (issue 13)
    LoadImageMask, LoadImageOutput, ImageToMask, MaskToImage, SolidMask, InvertMask, GrowMask, FeatherMask,
    ThresholdMask, ImageCompositeMasked, ImageColorToMask, CropMask, MaskComposite, MaskPreview,
    ImageScaleBy, ImageScaleToTotalPixels, ImageInvert, ImageBatch, ImageBlur, ImageSharpen, Canny, ImageCrop,
    EmptyImage,
    LatentComposite, LatentCompositeMasked, LatentBlend, RepeatLatentBatch, LatentFromBatch, LatentCrop, LatentFlip,
    LatentRotate, SetLatentNoiseMask,
    ConditioningAverage, ConditioningConcat, ConditioningSetMask, ConditioningSetAreaPercentage,
    ConditioningSetAreaStrength, DifferentialDiffusion,
    VAEDecodeTiled, VAEEncodeTiled,
    VAEEncodeForInpaint, ImagePadForOutpaint, UpscaleModelLoader, ImageUpscaleWithModel,
)

#: class_type -> node class, like ComfyUI's ``nodes.NODE_CLASS_MAPPINGS``.
NODE_CLASS_MAPPINGS: dict[str, type[Node]] = {cls.__name__: cls for cls in NODE_CLASSES}


def object_info(files: dict[str, list[str]] | None = None) -> dict[str, dict[str, Any]]:
    """The ``/object_info`` dict of every node; file-name combos list ``files`` (None: any name passes)."""
    return {cls.__name__: node_info(cls, files) for cls in NODE_CLASSES}


def markdown() -> str:
    """docs/nodes.md: every node the embedded engine runs, by category, with its description."""
    lines = ["# Nodes the embedded engine runs", "",
             "Generated by `python -c \"import comfykit.nodes as n; print(n.markdown(), end='')\" > docs/nodes.md`;",
             "`tests/test_node_declarations.py` checks it is current. Every other ComfyUI node runs on a ComfyUI",
             "server (`ck.ComfyServer`).", ""]
    by_category: dict[str, list[type[Node]]] = {}
    for cls in NODE_CLASSES:
        by_category.setdefault(cls.CATEGORY, []).append(cls)
    for category in sorted(by_category):
        lines += [f"## {category}", "", "| node | what it does |", "|---|---|"]
        lines += [f"| `{cls.__name__}` | {description(cls)} |" for cls in by_category[category]]
        lines.append("")
    return "\n".join(lines)


__all__ = ["ANY_FILE", "NODE_CLASSES", "NODE_CLASS_MAPPINGS", "Node", "declared_inputs", "markdown", "node_info",
           "object_info"]
