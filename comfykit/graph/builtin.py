"""The built-in schema: ``/object_info`` of the nodes comfykit's engine implements, from their declarations.

Each node is declared once, in :mod:`comfykit.nodes` (torch-free); this module is the graph layer's view of it.
Input names, types, defaults, ranges, options, output types and names, display names and categories equal
ComfyUI 0.3.64's; the descriptions and tooltips are our own.

>>> from comfykit.graph import builtin
>>> builtin.object_info(files={"checkpoints": ["tiny.safetensors"]})["CheckpointLoaderSimple"]["input"]
{'required': {'ckpt_name': [['tiny.safetensors'], {'tooltip': 'Checkpoint file to load.', 'folder': 'checkpoints'}]}}
"""

from __future__ import annotations

from typing import Any

from ..nodes import NODE_CLASS_MAPPINGS
from ..nodes import object_info as _object_info
from ..nodes.base import ANY_FILE, MAX_RESOLUTION, MAX_SEED
from ..nodes.image import IMAGE_UPSCALE_METHODS as _IMAGE_UPSCALE
from ..nodes.latent import UPSCALE_METHODS as _UPSCALE
from ..nodes.sampling import SAMPLER_NAMES as _SAMPLERS
from ..nodes.sampling import SCHEDULER_NAMES as _SCHEDULERS

SAMPLER_NAMES = list(_SAMPLERS)
SCHEDULER_NAMES = list(_SCHEDULERS)
UPSCALE_METHODS = list(_UPSCALE)
IMAGE_UPSCALE_METHODS = list(_IMAGE_UPSCALE)

BUILTIN_NODES: tuple[str, ...] = tuple(NODE_CLASS_MAPPINGS)


def object_info(files: dict[str, list[str]] | None = None) -> dict[str, dict[str, Any]]:
    """The ``/object_info`` dict of every built-in node; file-name combos list ``files`` (None: any name passes)."""
    return _object_info(files)


__all__ = ["ANY_FILE", "BUILTIN_NODES", "IMAGE_UPSCALE_METHODS", "MAX_RESOLUTION", "MAX_SEED", "SAMPLER_NAMES",
           "SCHEDULER_NAMES", "UPSCALE_METHODS", "object_info"]
