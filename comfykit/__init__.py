"""comfykit: ComfyUI workflows as Python, run in-process on torch or on a ComfyUI server, from notebooks.

>>> import comfykit as ck
>>> wf = ck.Workflow()
>>> ckpt = wf.CheckpointLoaderSimple(ckpt_name="v1-5-pruned-emaonly.safetensors")

Heavy parts (torch, aiohttp, ipywidgets, pyngrok, ray) load only when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    ComfykitError,
    ExecutionError,
    InterruptedError,
    ModelError,
    ServerError,
    ValidationError,
)
from .events import Event
from .result import Result

__version__ = "0.1.0"

# name -> (module, attribute); attribute None means the module itself
_LAZY = {
    "Workflow": ("comfykit.graph", "Workflow"),
    "Schema": ("comfykit.graph", "Schema"),
    "Job": ("comfykit.job", "Job"),
    "Backend": ("comfykit.job", "Backend"),
    "Engine": ("comfykit.engine", "Engine"),
    "ComfyServer": ("comfykit.client", "ComfyServer"),
    "serve": ("comfykit.server", "serve"),
    "share": ("comfykit.share", "share"),
    "sweep": ("comfykit.sweep", "sweep"),
    "RayPool": ("comfykit.pool", "RayPool"),
    "demo": ("comfykit.demo", None),
    "hub": ("comfykit.hub", None),
    "ui": ("comfykit.ui", None),
    "plot": ("comfykit.plot", None),
    "graph": ("comfykit.graph", None),
    "templates": ("comfykit.templates", None),
}

__all__ = ["ComfykitError", "ExecutionError", "InterruptedError", "ModelError", "ServerError",
           "ValidationError", "Event", "Result", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'comfykit' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
