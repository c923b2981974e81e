"""Events every backend emits: ComfyUI's WebSocket messages as small Python objects.

An :class:`Event` is one ComfyUI WebSocket text message (``{"type": ..., "data": ...}``) with ``data`` in exactly
ComfyUI's shape, so the server can forward it unchanged and a widget never needs to know which backend ran.
A ``progress`` event may carry ``preview``, a PIL image of the current denoised estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EXECUTION_START = "execution_start"
EXECUTION_CACHED = "execution_cached"
EXECUTING = "executing"
PROGRESS = "progress"
EXECUTED = "executed"
EXECUTION_SUCCESS = "execution_success"
EXECUTION_ERROR = "execution_error"
EXECUTION_INTERRUPTED = "execution_interrupted"
STATUS = "status"

#: The messages that end a run, in ComfyUI's words.
TERMINAL = (EXECUTION_SUCCESS, EXECUTION_ERROR, EXECUTION_INTERRUPTED)


@dataclass(frozen=True)
class Event:
    """One execution message: ``type`` is ComfyUI's message name, ``data`` its payload."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    preview: Any = None  # PIL.Image.Image on progress events when previews are on

    @property
    def prompt_id(self) -> str | None:
        return self.data.get("prompt_id")

    @property
    def node(self) -> str | None:
        """The node the message is about (``node`` or ``node_id`` in ComfyUI's data)."""
        return self.data.get("node", self.data.get("node_id"))

    def to_json(self) -> dict[str, Any]:
        """The WebSocket text frame ComfyUI would send for this event."""
        return {"type": self.type, "data": self.data}

    def __repr__(self) -> str:
        extra = ", preview=<image>" if self.preview is not None else ""
        return f"Event({self.type!r}, {self.data!r}{extra})"


EventCallback = Callable[[Event], None]
