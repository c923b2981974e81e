"""Events every backend emits: ComfyUI's WebSocket messages as small Python objects.

An :class:`Event` is one ComfyUI WebSocket text message (``{"type": ..., "data": ...}``) with ``data`` in exactly
ComfyUI's shape, so the server can forward it unchanged and a widget never needs to know which backend ran.
A ``progress`` event may carry ``preview``, a PIL image of the current denoised estimate. The engine attaches a
:class:`LazyPreview` (raw RGB bytes) instead, so the sampling thread never builds the PIL image: ``event.preview``
makes it on first access, in whichever thread looks.
"""

from __future__ import annotations

import threading
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


class LazyPreview:
    """An RGB preview kept as raw bytes; :meth:`image` makes the PIL image (resized to ``target``) once.

    Pickles as the bytes (a 64x64 preview is 12 KB), so a Result or an event crossing processes stays small and
    needs neither torch nor numpy on the other side.
    """

    __slots__ = ("data", "size", "target", "_image", "_lock")

    def __init__(self, data: bytes, size: tuple[int, int], target: tuple[int, int] | None = None):
        if len(data) != size[0] * size[1] * 3:
            raise ValueError(f"preview of size {size} needs {size[0] * size[1] * 3} RGB bytes, got {len(data)}")
        self.data, self.size = bytes(data), (int(size[0]), int(size[1]))
        self.target = (int(target[0]), int(target[1])) if target is not None else self.size
        self._image: Any = None
        self._lock = threading.Lock()

    def image(self) -> Any:
        """The preview as a PIL image of size ``target`` (made on the first call, then kept)."""
        if self._image is None:
            from PIL import Image

            with self._lock:  # two threads looking at once make it once
                if self._image is None:
                    image = Image.frombytes("RGB", self.size, self.data)
                    if self.target != self.size:
                        image = image.resize(self.target, Image.Resampling.BILINEAR)
                    self._image = image
        return self._image

    def __reduce__(self) -> tuple[Any, ...]:
        return LazyPreview, (self.data, self.size, self.target)

    def __repr__(self) -> str:
        return f"LazyPreview({self.size[0]}x{self.size[1]} -> {self.target[0]}x{self.target[1]})"


class _Preview:
    """The ``Event.preview`` field: stored as given, read as a PIL image (a LazyPreview is made on first read)."""

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return None  # the dataclass default
        value = obj.__dict__.get("_preview")
        return value.image() if isinstance(value, LazyPreview) else value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__["_preview"] = value


@dataclass(frozen=True)
class Event:
    """One execution message: ``type`` is ComfyUI's message name, ``data`` its payload.

    ``preview`` (progress events, when someone asked for previews) reads as a PIL image; it may be given as a PIL
    image or as a :class:`LazyPreview`, which becomes one when first read.
    """

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    preview: Any = _Preview()

    @property
    def has_preview(self) -> bool:
        """True when the event carries a preview (checking does not build the image)."""
        return self.__dict__.get("_preview") is not None

    def with_data(self, data: dict[str, Any]) -> Event:
        """This event with ``data`` instead, its preview carried over as it is (a LazyPreview stays lazy)."""
        return Event(self.type, data, self.__dict__.get("_preview"))

    def without_preview(self) -> Event:
        """This event without its preview (what a Result keeps unless asked to keep previews)."""
        return self if not self.has_preview else Event(self.type, self.data)

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
        extra = ", preview=<image>" if self.has_preview else ""
        return f"Event({self.type!r}, {self.data!r}{extra})"


EventCallback = Callable[[Event], None]
