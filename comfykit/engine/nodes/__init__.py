"""The engine's node implementations, one class per ComfyUI core node; names equal ``comfykit.graph.builtin``."""

from __future__ import annotations

from .base import Node
from .conditioning import CLIPSetLastLayer, CLIPTextEncode, ConditioningCombine, ConditioningSetArea
from .image import ImageScale, LoadImage, PreviewImage, SaveImage
from .latent import EmptyLatentImage, LatentUpscale, LatentUpscaleBy
from .loaders import CheckpointLoaderSimple, LoraLoader, LoraLoaderModelOnly, VAELoader
from .sampling import KSampler, KSamplerAdvanced, VAEDecode, VAEEncode

#: class_type -> node class, like ComfyUI's ``nodes.NODE_CLASS_MAPPINGS``.
NODE_CLASS_MAPPINGS: dict[str, type[Node]] = {cls.__name__: cls for cls in (
    CheckpointLoaderSimple, VAELoader, LoraLoader, LoraLoaderModelOnly, CLIPTextEncode, CLIPSetLastLayer,
    ConditioningCombine, ConditioningSetArea, EmptyLatentImage, LatentUpscale, LatentUpscaleBy, KSampler,
    KSamplerAdvanced, VAEDecode, VAEEncode, LoadImage, SaveImage, PreviewImage, ImageScale)}

__all__ = ["NODE_CLASS_MAPPINGS", "Node"]
