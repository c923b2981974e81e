"""The base class of every engine node: ComfyUI's V1 node attributes plus a handle on the running Engine."""

from __future__ import annotations

from typing import Any, ClassVar


class Node:
    """One ComfyUI node type; the executor calls ``getattr(node, FUNCTION)(**inputs)``.

    ``HIDDEN`` maps input names to ComfyUI's hidden kinds ("PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID"). While a node
    runs, ``self.ctx`` is a :class:`comfykit.engine.executor.RunContext` (progress and interrupt checks).
    """

    FUNCTION: ClassVar[str] = "run"
    RETURN_TYPES: ClassVar[tuple[str, ...]] = ()
    OUTPUT_NODE: ClassVar[bool] = False
    NOT_IDEMPOTENT: ClassVar[bool] = False
    HIDDEN: ClassVar[dict[str, str]] = {}

    def __init__(self, engine: Any = None):
        self.engine = engine
        self.ctx: Any = None

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        """Report progress of this node (and stop here if the run was interrupted)."""
        if self.ctx is not None:
            self.ctx.progress(value, total, preview)

    def check_interrupt(self) -> None:
        if self.ctx is not None:
            self.ctx.check_interrupt()
