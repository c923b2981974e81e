"""ComfyUI's nodes as comfykit declares and implements them: one class per node, importable without torch.

``object_info(files)`` is the graph layer's built-in schema and ``NODE_CLASS_MAPPINGS`` the engine's registry;
both come from the same classes (see :mod:`comfykit.nodes.base` for how to declare one).
"""

from __future__ import annotations

from typing import Any

from .base import ANY_FILE, Node, declared_inputs, node_info
from .conditioning import CLIPSetLastLayer, CLIPTextEncode, ConditioningCombine, ConditioningSetArea
from .conditioning_ops import (
    ConditioningSetTimestepRange,
    ConditioningZeroOut,
    InpaintModelConditioning,
    InstructPixToPixConditioning,
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
from .image_ops import ImageStitch
from .inpaint import ImagePadForOutpaint, VAEEncodeForInpaint
from .latent import EmptyLatentImage, LatentUpscale, LatentUpscaleBy
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
from .sampling import KSampler, KSamplerAdvanced, VAEDecode, VAEEncode
from .upscale import ImageUpscaleWithModel, UpscaleModelLoader

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
    VAEEncodeForInpaint, ImagePadForOutpaint, UpscaleModelLoader, ImageUpscaleWithModel,
)

#: class_type -> node class, like ComfyUI's ``nodes.NODE_CLASS_MAPPINGS``.
NODE_CLASS_MAPPINGS: dict[str, type[Node]] = {cls.__name__: cls for cls in NODE_CLASSES}


def object_info(files: dict[str, list[str]] | None = None) -> dict[str, dict[str, Any]]:
    """The ``/object_info`` dict of every node; file-name combos list ``files`` (None: any name passes)."""
    return {cls.__name__: node_info(cls, files) for cls in NODE_CLASSES}


__all__ = ["ANY_FILE", "NODE_CLASSES", "NODE_CLASS_MAPPINGS", "Node", "declared_inputs", "node_info", "object_info"]
