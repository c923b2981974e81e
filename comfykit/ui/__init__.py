"""Notebook widgets (ipywidgets 7.7+ and 8): ``PromptBox`` and its ``Gallery``.

>>> box = ck.ui.PromptBox(wf, engine)          # doctest: +SKIP
"""

from __future__ import annotations

try:
    import ipywidgets  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("comfykit.ui needs ipywidgets: pip install 'ipywidgets>=7.7,<9'") from exc

from .fields import SEED_CONTROLS, Field, default_refs
from .gallery import Gallery, GalleryEntry, save_png
from .promptbox import PromptBox, error_text

__all__ = ["PromptBox", "Gallery", "GalleryEntry", "Field", "SEED_CONTROLS", "default_refs", "save_png",
           "error_text"]
