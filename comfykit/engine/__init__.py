"""The embedded torch engine: ComfyUI's executor, caches and core nodes in-process (``ck.Engine``).

``Engine`` (and torch with it) loads on first access, so ``comfykit.engine.folders`` stays light.
"""

from __future__ import annotations

from typing import Any

from .folders import Folders

__all__ = ["Engine", "Folders"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(f"module 'comfykit.engine' has no attribute {name!r}")
