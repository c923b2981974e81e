"""The embedded torch engine: ComfyUI's executor, caches and core nodes in-process (``ck.Engine``)."""

from __future__ import annotations

from .engine import Engine
from .folders import Folders

__all__ = ["Engine", "Folders"]
