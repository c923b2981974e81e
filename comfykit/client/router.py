"""Route a client's WebSocket messages to the runs they belong to, and pair previews with progress events."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..events import EXECUTED, EXECUTING, EXECUTION_CACHED, PROGRESS, TERMINAL, Event
from ..job import Job
from .frames import PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA, FrameError, decode_frame

log = logging.getLogger(__name__)

#: The ComfyUI messages a run reports as Events (the contract of comfykit.events); queue-level ``status``,
#: ``progress_state`` and the ``executing`` done signal are bookkeeping, not events.
EVENT_TYPES = ("execution_start", EXECUTION_CACHED, EXECUTING, PROGRESS, EXECUTED, *TERMINAL)

_MAX_ORPHANS = 32  # prompt ids whose messages we keep until their run registers


class RunState:
    """What one prompt has reported so far: events, executed/cached nodes, timings, outputs, the end."""

    def __init__(self, prompt_id: str, prompt: dict[str, Any], job: Job, *, fetch_images: bool = True,
                 keep_previews: bool = False):
        self.prompt_id = prompt_id
        self.keep_previews = keep_previews
        self.prompt = prompt
        self.job = job
        self.fetch_images = fetch_images
        self.events: list[Event] = []
        self.executed: list[str] = []
        self.cached: list[str] = []
        self.timings: dict[str, float] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.terminal: Event | None = None
        self.done = False  # ``executing`` with node None arrived: history is written
        self.finishing = False
        self.cancelled = False
        self.last_seen = time.monotonic()
        self.checks_missing = 0
        self._current: tuple[str, float] | None = None
        self._preview: tuple[str | None, Any] | None = None  # type-4 preview waiting for its progress
        self._claim_lock = threading.Lock()

    def claim(self) -> bool:
        """Take the right to finish this run; False when another thread already took it."""
        with self._claim_lock:
            if self.finishing:
                return False
            self.finishing = True
            return True

    def emit(self, event: Event) -> None:
        self.events.append(event if self.keep_previews else event.without_preview())
        self.job.emit(event)

    def _close_node(self, now: float) -> None:
        if self._current is not None:
            node, started = self._current
            self.timings[node] = self.timings.get(node, 0.0) + (now - started)
            self._current = None

    def handle(self, event: Event, now: float) -> None:
        """Update the state with one message of this prompt and emit it when it is an Event type."""
        self.last_seen = now
        kind, data = event.type, event.data
        if kind == EXECUTING:
            self._close_node(now)
            node = data.get("node")
            if node is None:
                self.done = True
                return
            node = str(node)
            if node not in self.executed:
                self.executed.append(node)
            self._current = (node, now)
        elif kind == EXECUTION_CACHED:
            self.cached = [str(n) for n in data.get("nodes") or []]
        elif kind == EXECUTED:
            node = str(data.get("node"))
            if self._current is not None and self._current[0] == node:
                self._close_node(now)
            if data.get("output") is not None:
                self.outputs[node] = data["output"]
        elif kind in TERMINAL:
            self._close_node(now)
            self.terminal = event
        if kind in EVENT_TYPES:
            self.emit(event)

    def take_preview(self, node: str | None) -> Any:
        """The type-4 preview that announced this node's progress, if one is waiting."""
        waiting, self._preview = self._preview, None
        if waiting is not None and (waiting[0] is None or node is None or str(waiting[0]) == str(node)):
            return waiting[1]
        return None

    def put_preview(self, node: str | None, image: Any) -> None:
        self._preview = (node, image)


class Router:
    """Dispatches messages of one client id to registered runs by ``prompt_id``.

    Legacy previews (type 1) carry no ids and follow their ``progress`` message, so when they may come the
    last progress event is held until the next frame shows whether a preview belongs to it. Previews with
    metadata (type 4) come first and wait on their run for the progress message that follows.
    """

    def __init__(self, on_done: Callable[[RunState], None], legacy_previews: Callable[[], bool]):
        self.on_done = on_done
        self.legacy_previews = legacy_previews
        self.runs: dict[str, RunState] = {}
        self._orphans: OrderedDict[str, list[Any]] = OrderedDict()
        self._held: tuple[RunState, Event] | None = None
        self._lock = threading.RLock()

    def register(self, run: RunState) -> None:
        with self._lock:
            self.runs[run.prompt_id] = run
            early = self._orphans.pop(run.prompt_id, [])
        for item in early:  # messages that beat the POST answer (a server that ignored our prompt_id)
            self._dispatch(run, item)

    def unregister(self, prompt_id: str) -> None:
        with self._lock:
            self.runs.pop(prompt_id, None)
            if self._held is not None and self._held[0].prompt_id == prompt_id:
                self._held = None

    def active(self) -> list[RunState]:
        with self._lock:
            return list(self.runs.values())

    # -- socket callbacks ---------------------------------------------------------------------------------
    def on_text(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.flush()
            kind = message.get("type")
            data = message.get("data") or {}
            if not isinstance(data, dict) or kind not in (*EVENT_TYPES, "progress_state"):
                return  # status, feature flags, custom node messages
            prompt_id = data.get("prompt_id")
            if prompt_id is None:
                return  # the reconnect greeting ``executing`` without prompt id
            run = self.runs.get(prompt_id)
            if run is None:
                self._keep_orphan(prompt_id, message)
                return
            self._dispatch(run, message)

    def on_binary(self, payload: bytes) -> None:
        try:
            frame = decode_frame(payload)
        except (FrameError, OSError, ValueError) as exc:
            log.warning("ignoring a binary frame that does not decode: %s", exc)
            return
        with self._lock:
            if frame.type == PREVIEW_IMAGE:
                if self._held is not None:
                    run, event = self._held
                    self._held = None
                    run.emit(Event(event.type, event.data, preview=frame.image))
                return
            self.flush()
            if frame.type == PREVIEW_IMAGE_WITH_METADATA:
                run = self.runs.get(frame.prompt_id or "")
                if run is not None:
                    run.put_preview(frame.node_id, frame.image)

    def flush(self) -> None:
        """Emit a held progress event without a preview (none came for it)."""
        with self._lock:
            if self._held is not None:
                run, event = self._held
                self._held = None
                run.emit(event)

    # -- internals ----------------------------------------------------------------------------------------
    def _keep_orphan(self, prompt_id: str, message: dict[str, Any]) -> None:
        self._orphans.setdefault(prompt_id, []).append(message)
        self._orphans.move_to_end(prompt_id)
        while len(self._orphans) > _MAX_ORPHANS:
            self._orphans.popitem(last=False)

    def _dispatch(self, run: RunState, message: dict[str, Any]) -> None:
        kind, data = message.get("type"), message.get("data") or {}
        if kind == "progress_state":
            run.last_seen = time.monotonic()
            return
        event = Event(kind, data)
        if kind == PROGRESS:
            run.last_seen = time.monotonic()
            preview = run.take_preview(data.get("node"))
            if preview is not None:
                run.emit(Event(kind, data, preview=preview))
            elif self.legacy_previews():
                self._held = (run, event)
            else:
                run.emit(event)
            return
        run.handle(event, time.monotonic())
        if run.done and run.claim():
            self.on_done(run)
