"""The one worker thread that drains the prompt queue through ``engine.execute`` (ComfyUI's prompt_worker)."""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..errors import ValidationError
from ..events import Event
from ..graph.validate import ValidatedPrompt
from .hub import Hub, encode_preview
from .protocol import ServerEngine
from .queue import PromptQueue

log = logging.getLogger(__name__)

# Messages ComfyUI keeps in a history item's status.messages.
_RECORDED = ("execution_start", "execution_cached", "execution_success", "execution_error",
             "execution_interrupted")


class Worker:
    """Runs queued prompts one at a time, forwards their events to the sockets, and files their history."""

    def __init__(self, engine: ServerEngine, queue: PromptQueue, hub: Hub, *, preview_size: int = 512,
                 on_done: Callable[[str, dict[str, Any]], None] | None = None):
        self.engine = engine
        self.queue = queue
        self.hub = hub
        self.preview_size = preview_size
        self.on_done = on_done
        self._out = _OrderedSender()
        self._stop = threading.Event()
        self._free_flags: dict[str, bool] = {}
        self._lock = threading.Lock()
        self.current: tuple[str, str | None] | None = None  # (prompt_id, client_id) of the running prompt
        self.last_node: Any = None
        self._thread = threading.Thread(target=self._loop, name="comfykit-server-worker", daemon=True)

    def start(self) -> None:
        self._out.start()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the running prompt (interrupting it first)."""
        self._stop.set()
        if self.current is not None:
            self.engine.interrupt()
        self._thread.join(timeout)
        self._out.stop(timeout)

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """Ask for models/caches to be freed once the running prompt is done (as ComfyUI's /free)."""
        with self._lock:
            self._free_flags["unload_models"] = self._free_flags.get("unload_models", False) or unload_models
            self._free_flags["free_memory"] = self._free_flags.get("free_memory", False) or free_memory

    def executing_for(self, sid: str) -> Any:
        """The node a reconnecting client's prompt is on, or None when that client has nothing running."""
        current = self.current
        if current is not None and current[1] == sid:
            return self.last_node
        return None

    # -- the loop -----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            got = self.queue.get(timeout=0.5)
            # /free applies before the next prompt, even one posted right after it while we were idle
            self._maybe_free()
            if got is not None:
                try:
                    self._run(*got)
                except Exception:  # never let one prompt kill the server's only worker
                    log.exception("server worker failed on a prompt")
                self._maybe_free()

    def _maybe_free(self) -> None:
        with self._lock:
            flags, self._free_flags = self._free_flags, {}
        if flags:
            try:
                self.engine.free(unload_models=flags["unload_models"], free_memory=flags["free_memory"])
            except Exception:
                log.exception("engine.free failed")

    def _run(self, item: list[Any], task_id: int) -> None:
        number, prompt_id, prompt, extra_data, outputs = item[:5]
        client_id = extra_data.get("client_id")
        self.current, self.last_node = (prompt_id, client_id), None
        messages: list[list[Any]] = []
        progress = _ProgressState(prompt_id, lambda data: self._out.call(self._send_state, data, client_id))

        def on_event(event: Event) -> None:
            if event.type in _RECORDED:
                messages.append([event.type, event.data])
            progress.before(event)
            self._forward(event, client_id)
            progress.after(event)

        result = None
        try:
            # validated when it was posted (that answer is what the queue holds): run it as it is, like ComfyUI;
            # previews only while a socket would receive them
            result = self.engine.execute(ValidatedPrompt(prompt, list(outputs), {}), prompt_id=prompt_id,
                                         extra_data=extra_data, outputs=outputs, on_event=on_event,
                                         previews=lambda: self.hub.has_listeners(client_id))
        except ValidationError as exc:  # an engine that validates again found a file gone: a node failure
            on_event(Event("execution_error", _error_data(prompt_id, exc, "ValidationError")))
        except Exception as exc:  # an engine bug must still end the prompt properly for its client
            log.exception("engine.execute raised for prompt %s", prompt_id)
            on_event(Event("execution_error", _error_data(prompt_id, exc, type(exc).__name__)))
        finally:
            self.current = None

        ok = result is not None and result.status == "success"
        outputs_ui = dict(result.outputs) if result is not None else {}
        history = {
            "outputs": outputs_ui,
            "status": {"status_str": "success" if ok else "error", "completed": ok, "messages": messages},
            "meta": {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                     for nid in outputs_ui},
        }
        self.queue.task_done(task_id, history)
        if client_id is not None:
            self._out.call(self.hub.send, "executing", {"node": None, "prompt_id": prompt_id}, client_id)
        self._out.call(self.hub.flush_now)  # the end of a prompt goes out at once, not on the hub's timer
        if self.on_done is not None:
            self.on_done(prompt_id, history)

    def _send_state(self, data: dict[str, Any], client_id: str | None) -> None:
        # Like progress, ComfyUI broadcasts it when the prompt has no client id.
        if self.hub.has_listeners(client_id):
            self.hub.send("progress_state", data, client_id)

    def _forward(self, event: Event, client_id: str | None) -> None:
        if event.type == "executing":
            self.last_node = event.data.get("node")
        if event.type == "progress":
            # ComfyUI broadcasts progress (and its previews) when the prompt has no client id.
            if not self.hub.has_listeners(client_id):
                return
            node = event.data.get("node")
            meta = {"node_id": node, "prompt_id": event.data.get("prompt_id"), "display_node_id": node,
                    "parent_node_id": None, "real_node_id": node, "image_type": "image/jpeg"}
            if event.has_preview:  # made into a JPEG on the sender's thread, not the sampling one
                self._out.later(self._send_progress, event, meta, client_id)
            else:
                self._out.call(self.hub.send_progress, event.data, None, meta, client_id)
        elif event.type == "execution_interrupted":
            self._out.call(self.hub.send, event.type, event.data, client_id)  # broadcast when no client id
        elif client_id is not None:
            self._out.call(self.hub.send, event.type, event.data, client_id)

    def _send_progress(self, event: Event, meta: dict[str, Any], client_id: str | None) -> None:
        jpeg = None
        try:
            jpeg = encode_preview(event.preview, self.preview_size)
        except Exception:
            log.exception("could not encode a preview")
        self.hub.send_progress(event.data, jpeg, meta, client_id)


class _OrderedSender:
    """Hands the worker's messages to the hub in order, encoding preview JPEGs on a thread of its own.

    While nothing waits on that thread a message goes straight through (no thread hop); once a preview is
    being encoded, later messages queue behind it so every socket still sees ComfyUI's order.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0  # calls queued or running on the thread
        self._thread = threading.Thread(target=self._loop, name="comfykit-server-previews", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` now if nothing is queued, else after what is."""
        with self._lock:
            if self._waiting == 0 or not self._thread.is_alive():
                fn(*args)
                return
            self._waiting += 1
            self._queue.put((fn, args))

    def later(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` on the sender's thread, in order with everything else."""
        with self._lock:
            if not self._thread.is_alive():
                fn(*args)
                return
            self._waiting += 1
            self._queue.put((fn, args))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # a bad preview must not stop the messages behind it
                log.exception("sending a server message failed")
            finally:
                with self._lock:
                    self._waiting -= 1


class _ProgressState:
    """ComfyUI's ``progress_state`` messages (every node started so far: value, max, running/finished/error)."""

    def __init__(self, prompt_id: str, send: Callable[[dict[str, Any]], None]):
        self.prompt_id = prompt_id
        self.send = send
        self.nodes: dict[str, dict[str, Any]] = {}
        self.running: str | None = None

    def _set(self, node: str, value: float, maximum: float, state: str) -> None:
        self.nodes[node] = {"value": value, "max": maximum, "state": state, "node_id": node,
                            "prompt_id": self.prompt_id, "display_node_id": node, "parent_node_id": None,
                            "real_node_id": node}
        self.send({"prompt_id": self.prompt_id, "nodes": self.nodes})

    def _finish_running(self) -> None:
        if self.running is not None:
            entry = self.nodes[self.running]
            self._set(self.running, entry["max"], entry["max"], "finished")
            self.running = None

    def before(self, event: Event) -> None:
        """Called before ``event`` is forwarded (ComfyUI sends the state first for these)."""
        node = event.data.get("node")
        if event.type == "executing" and node is not None:
            self._finish_running()
            self.running = str(node)
            self._set(self.running, 0.0, 1.0, "running")
        elif event.type == "progress" and node is not None:
            self._set(str(node), event.data.get("value", 0), event.data.get("max", 1), "running")
        elif event.type == "execution_success":
            self._finish_running()
        elif event.type in ("execution_error", "execution_interrupted"):
            self.running = None  # ComfyUI sends no state for the failed node

    def after(self, event: Event) -> None:
        """Called after ``event`` is forwarded: an output node's ``executed`` finishes it."""
        if event.type == "executed":
            node = str(event.data.get("node"))
            if node == self.running:
                self._finish_running()
            elif node not in self.nodes:  # a cached output replayed
                self._set(node, 1, 1, "finished")


def _error_data(prompt_id: str, exc: BaseException, exc_type: str) -> dict[str, Any]:
    return {"prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [],
            "exception_message": str(exc), "exception_type": exc_type,
            "traceback": traceback.format_exception(type(exc), exc, exc.__traceback__),
            "current_inputs": {}, "current_outputs": [], "timestamp": int(time.time() * 1000)}
