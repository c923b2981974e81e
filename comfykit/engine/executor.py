"""Runs one validated API prompt with ComfyUI's ordering, caching and messages (``execution.py`` semantics).

The :class:`Executor` knows nothing about models or folders: it takes a node registry (class_type -> class) and
a factory that builds node instances, so tests can drive it with tiny made-up nodes.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..errors import ExecutionError, InterruptedError
from ..events import (
    EXECUTED,
    EXECUTING,
    EXECUTION_CACHED,
    EXECUTION_ERROR,
    EXECUTION_INTERRUPTED,
    EXECUTION_START,
    EXECUTION_SUCCESS,
    PROGRESS,
    Event,
)
from ..result import Result
from .cache import ObjectCache, SignatureCache, changed_value, is_link, signatures
from .interrupt import checking


class Interrupted(Exception):
    """Raised inside a node (between nodes or in a sampler step) when ``interrupt()`` was called."""


def now_ms() -> int:
    return int(time.time() * 1000)


def full_type_name(exc: BaseException) -> str:
    """``module.QualName`` like ComfyUI's ``full_type_name`` (bare name for builtins)."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in (None, "builtins") else f"{module}.{cls.__qualname__}"


def _format_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


def _never() -> bool:
    return False


class RunContext:
    """What a running node may call: progress reports (with an optional preview) and interrupt checks."""

    def __init__(self, executor: Executor, prompt_id: str, node_id: str, emit: Callable[[Event], None],
                 previews: Callable[[], bool] = _never):
        self.executor, self.prompt_id, self.node_id, self._emit = executor, prompt_id, node_id, emit
        self._previews = previews

    @property
    def wants_previews(self) -> bool:
        """True while someone listens for step previews (asked again each step: a listener may come later)."""
        return self._previews()

    def check_interrupt(self) -> None:
        """Raise :class:`Interrupted` if ``interrupt()`` was called (ComfyUI checks this every sampler step)."""
        if self.executor.interrupt_flag.is_set():
            raise Interrupted()

    @property
    def interrupted(self) -> bool:
        return self.executor.interrupt_flag.is_set()

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        """Emit ``progress`` for this node; ``preview`` is a PIL image, a LazyPreview, or a callable making one.

        A callable is called only when :attr:`wants_previews`; a preview given as it is goes out as it is.
        """
        self.check_interrupt()
        if callable(preview):
            preview = preview() if self.wants_previews else None
        self._emit(Event(PROGRESS, {"value": value, "max": total, "prompt_id": self.prompt_id,
                                    "node": self.node_id}, preview=preview))


class ExecutionList:
    """ComfyUI's ``ExecutionList``: DFS-collected pending nodes, block counts and ``ux_friendly_pick_node``."""

    def __init__(self, prompt: dict[str, Any], is_cached: Callable[[str], bool], is_output: Callable[[str], bool]):
        self.prompt, self.is_cached, self.is_output = prompt, is_cached, is_output
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, set[int]]] = {}

    def add_node(self, node_id: str) -> None:
        stack, links = [node_id], []
        while stack:
            current = stack.pop()
            if current in self.pending:
                continue
            self.pending[current] = True
            self.block_count[current] = 0
            self.blocking[current] = {}
            for value in self.prompt[current].get("inputs", {}).values():
                if is_link(value):
                    if not self.is_cached(value[0]):
                        stack.append(value[0])
                    links.append((value[0], value[1], current))
        for src, socket, dst in links:
            if not self.is_cached(src):
                self.add_node(src)
                if dst not in self.blocking[src]:
                    self.blocking[src][dst] = set()
                    self.block_count[dst] += 1
                self.blocking[src][dst].add(socket)

    def is_empty(self) -> bool:
        return not self.pending

    def stage(self) -> str:
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            raise RuntimeError(f"dependency cycle among nodes {sorted(self.pending)}; remove the loop")
        for node in ready:  # 1. an output node
            if self.is_output(node):
                return node
        for node in ready:  # 2. directly feeds an output
            if any(self.is_output(b) for b in self.blocking[node]):
                return node
        for node in ready:  # 3. feeds a node that feeds an output
            if any(self.is_output(b2) for b in self.blocking[node] for b2 in self.blocking.get(b, {})):
                return node
        return ready[0]

    def complete(self, node_id: str) -> None:
        for blocked in self.blocking.get(node_id, {}):
            self.block_count[blocked] -= 1
        self.pending.pop(node_id, None)


class Executor:
    """Executes API prompts over a node registry with ComfyUI's caches; one prompt at a time."""

    def __init__(self, nodes: dict[str, type], *, cache: str = "classic", cache_size: int = 0,
                 make_node: Callable[[type], Any] | None = None,
                 on_oom: Callable[[], None] | None = None):
        self.nodes = nodes
        self.cache_mode = cache
        self.outputs = SignatureCache(cache, cache_size)
        self.ui = SignatureCache(cache, cache_size)
        self.objects = ObjectCache()
        self.make_node = make_node or (lambda cls: cls())
        self.on_oom = on_oom
        self.interrupt_flag = threading.Event()
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Drop every cached output, ui and node instance (ComfyUI's ``PromptExecutor.reset``)."""
        self.outputs.clear()
        self.ui.clear()
        self.objects.clear()

    # -- helpers -------------------------------------------------------------------------------------------
    def _cls(self, prompt: dict[str, Any], node_id: str) -> type:
        class_type = prompt[node_id]["class_type"]
        try:
            return self.nodes[class_type]
        except KeyError:
            raise KeyError(f"node {node_id}: no implementation of class_type {class_type!r}") from None

    def _changed(self, prompt: dict[str, Any], node_id: str) -> Any:
        cls = self._cls(prompt, node_id)
        fn = getattr(cls, "IS_CHANGED", None)
        if fn is None:
            return None
        constants = {k: (None if is_link(v) else v) for k, v in prompt[node_id].get("inputs", {}).items()}
        try:
            obj = self.objects.get(node_id, prompt[node_id]["class_type"], lambda: self.make_node(cls))
            return changed_value(obj.IS_CHANGED(**constants))
        except Exception:  # ComfyUI turns a failing IS_CHANGED into NaN: the node always re-runs
            return changed_value(float("nan"))

    def _unique(self, prompt: dict[str, Any], node_id: str) -> bool:
        cls = self._cls(prompt, node_id)
        return bool(getattr(cls, "NOT_IDEMPOTENT", False)) or "UNIQUE_ID" in getattr(cls, "HIDDEN", {}).values()

    def _is_output(self, prompt: dict[str, Any], node_id: str) -> bool:
        return bool(getattr(self._cls(prompt, node_id), "OUTPUT_NODE", False))

    # -- the run -------------------------------------------------------------------------------------------
    def execute(self, prompt: dict[str, Any], prompt_id: str, *, outputs: list[str] | None = None,
                extra_data: dict[str, Any] | None = None, on_event: Callable[[Event], None] | None = None,
                original_prompt: dict[str, Any] | None = None, clear_interrupt: bool = True,
                previews: Callable[[], bool] = _never, keep_previews: bool = False) -> Result:
        """Run the nodes ``outputs`` need (default: every output node) and return a filled :class:`Result`.

        ``clear_interrupt=False`` keeps an ``interrupt_flag`` set before the call (the Engine clears it itself,
        earlier, so an interrupt racing with the start of a job is not lost). ``previews`` says whether anyone
        wants step previews now (nodes see it as ``ctx.wants_previews``); ``keep_previews`` keeps them in
        ``Result.events`` too, which otherwise holds the events without their previews.
        """
        with self._lock:
            if clear_interrupt:
                self.interrupt_flag.clear()
            return self._execute(prompt, prompt_id, outputs, extra_data or {}, on_event, original_prompt,
                                 previews, keep_previews)

    def _execute(self, prompt, prompt_id, outputs, extra_data, on_event, original_prompt, previews,
                 keep_previews) -> Result:
        result = Result(prompt_id=prompt_id, prompt=prompt)
        run_executed: list[str] = []  # ComfyUI's `executed` set: everything completed, replays included

        def emit(event: Event) -> None:
            # previews are for listeners: kept in the Result they would make it megabytes (20 steps, 512x512)
            result.events.append(event if keep_previews else event.without_preview())
            if on_event is not None:
                on_event(event)

        emit(Event(EXECUTION_START, {"prompt_id": prompt_id, "timestamp": now_ms()}))
        if outputs is None:
            outputs = [nid for nid in prompt if self._is_output(prompt, nid)]

        keys = signatures(prompt, lambda n: self._changed(prompt, n), lambda n: self._unique(prompt, n))
        for cache in (self.outputs, self.ui):
            cache.set_prompt(keys)
        self.objects.set_prompt(prompt)

        cached = [nid for nid in prompt if self.outputs.get(nid) is not None]
        result.cached.extend(cached)
        emit(Event(EXECUTION_CACHED, {"nodes": list(cached), "prompt_id": prompt_id, "timestamp": now_ms()}))

        todo = ExecutionList(prompt, lambda n: self.outputs.get(n) is not None,
                             lambda n: self._is_output(prompt, n))
        for node_id in outputs:
            todo.add_node(node_id)

        hidden = {"PROMPT": original_prompt if original_prompt is not None else prompt,
                  "EXTRA_PNGINFO": extra_data.get("extra_pnginfo"), "UNIQUE_ID": None}
        while not todo.is_empty():
            node_id = todo.stage()
            class_type = prompt[node_id]["class_type"]
            if self.outputs.get(node_id) is not None:
                # a cached output node (or the twin of an identical node run earlier in this prompt) replays
                entry = self.ui.get(node_id) or {}
                emit(Event(EXECUTED, {"node": node_id, "display_node": node_id, "output": entry.get("output"),
                                      "prompt_id": prompt_id}))
                self._collect(result, node_id, entry)
                if node_id not in result.cached:
                    result.cached.append(node_id)
                run_executed.append(node_id)
                todo.complete(node_id)
                continue
            inputs: dict[str, Any] = {}
            try:
                cls = self._cls(prompt, node_id)
                declared = _declared(cls)
                for name, value in prompt[node_id].get("inputs", {}).items():
                    if declared is not None and name not in declared:
                        continue  # ComfyUI passes only the inputs a node declares
                    inputs[name] = self.outputs.get(value[0])[value[1]] if is_link(value) else value
                for name, kind in getattr(cls, "HIDDEN", {}).items():
                    inputs[name] = node_id if kind == "UNIQUE_ID" else hidden.get(kind)
                emit(Event(EXECUTING, {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}))
                if self.interrupt_flag.is_set():  # ComfyUI checks right before calling the node
                    raise Interrupted()
                obj = self.objects.get(node_id, class_type, lambda cls=cls: self.make_node(cls))
                obj.ctx = RunContext(self, prompt_id, node_id, emit, previews)
                start = time.perf_counter()
                try:
                    with checking(obj.ctx.check_interrupt):  # model code deep below checks between pieces
                        out = getattr(obj, getattr(cls, "FUNCTION", "run"))(**inputs)
                finally:
                    obj.ctx = None
                result.timings[node_id] = time.perf_counter() - start
            except Interrupted:
                data = {"prompt_id": prompt_id, "node_id": node_id, "node_type": class_type,
                        "executed": list(run_executed), "timestamp": now_ms()}
                emit(Event(EXECUTION_INTERRUPTED, data))
                result.status, result.error = "interrupted", InterruptedError(data)
                return result
            except Exception as exc:  # noqa: BLE001 - every node failure becomes ComfyUI's execution_error
                if _is_oom(exc) and self.on_oom is not None:
                    self.on_oom()  # free cached models first so the next run has memory to work with
                data = {"prompt_id": prompt_id, "node_id": node_id, "node_type": class_type,
                        "executed": list(run_executed), "exception_message": str(exc),
                        "exception_type": full_type_name(exc),
                        "traceback": traceback.format_tb(exc.__traceback__),
                        "current_inputs": {k: [_format_value(v)] for k, v in inputs.items()},
                        "current_outputs": list(prompt), "timestamp": now_ms()}
                emit(Event(EXECUTION_ERROR, data))
                result.status, result.error = "error", ExecutionError(data)
                result.error.__cause__ = exc
                return result

            ui, values, extras = _split_output(out)
            self.outputs.set(node_id, tuple(values))
            entry = {"output": ui, "meta": {"node_id": node_id, "display_node": node_id, "parent_node": None,
                                            "real_node_id": node_id}, **extras}
            if ui is not None:
                self.ui.set(node_id, entry)
                emit(Event(EXECUTED, {"node": node_id, "display_node": node_id, "output": ui,
                                      "prompt_id": prompt_id}))
            self._collect(result, node_id, entry)
            result.executed.append(node_id)
            run_executed.append(node_id)
            todo.complete(node_id)

        for node_id in prompt:  # history outputs: every prompt node with a ui entry, cache hits included
            entry = self.ui.get(node_id)
            if entry is not None and entry.get("output") is not None:
                result.outputs[node_id] = entry["output"]
        emit(Event(EXECUTION_SUCCESS, {"prompt_id": prompt_id, "timestamp": now_ms()}))
        return result

    @staticmethod
    def _collect(result: Result, node_id: str, entry: dict[str, Any]) -> None:
        images = entry.get("images")
        if images:
            result.images_by_node[node_id] = list(images)
        for path in entry.get("files") or ():
            if path not in result.files:
                result.files.append(path)


def _split_output(out: Any) -> tuple[dict[str, Any] | None, tuple, dict[str, Any]]:
    """(ui, result values, extras) from a node's return: a tuple or ``{"ui", "result", "images", "files"}``."""
    if isinstance(out, dict):
        extras = {k: out[k] for k in ("images", "files") if k in out}
        return out.get("ui"), tuple(out.get("result") or ()), extras
    if out is None:
        return None, (), {}
    return None, tuple(out), {}


def _declared(cls: type) -> set[str] | None:
    """The input names a declared comfykit node takes; None for an undeclared test node (it gets everything)."""
    if not hasattr(cls, "INPUTS"):
        return None
    return {*cls.INPUTS, *getattr(cls, "OPTIONAL", {}), *getattr(cls, "HIDDEN", {})}


def _is_oom(exc: BaseException) -> bool:
    """Out of host memory, or torch's out of device memory (``torch.OutOfMemoryError``, also ``torch.cuda``'s)."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # no torch loaded: no torch error to catch, and no reason to import it
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return oom is not None and isinstance(exc, oom)
