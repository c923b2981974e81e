"""The pool's worker (a Ray actor holding one backend) and how errors cross the process boundary."""

from __future__ import annotations

import builtins
import dataclasses
import inspect
import os
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import ComfykitError, ExecutionError, InterruptedError, ServerError, ValidationError
from .prompts import MODEL_INPUTS


def _is_worker_failure(exc: BaseException) -> bool:
    """True for errors that say the worker (process or server) is gone, not that the job is bad."""
    if isinstance(exc, (ServerError, ConnectionError)):
        return True
    mod = type(exc).__module__ or ""
    return mod.startswith(("websocket", "requests", "urllib3")) and "ValidationError" not in type(exc).__name__


def encode_error(exc: BaseException) -> dict[str, Any]:
    """A picklable description of an error (comfykit errors do not survive pickling with their data)."""
    if isinstance(exc, ValidationError):
        return {"kind": "validation", "message": str(exc), "body": exc.to_dict()}
    if isinstance(exc, ExecutionError):
        return {"kind": "execution", "data": exc.data}
    if isinstance(exc, InterruptedError):
        return {"kind": "interrupted", "data": exc.data}
    return {"kind": "server" if _is_worker_failure(exc) else "other", "type": type(exc).__name__,
            "message": str(exc), "traceback": "".join(traceback.format_exception(exc))}


def decode_error(info: Mapping[str, Any], worker: str = "") -> Exception:
    """Rebuild the error ``encode_error`` described, naming the worker where that helps."""
    kind = info["kind"]
    if kind == "validation":
        body = info["body"]
        return ValidationError(info["message"], body.get("error"), body.get("node_errors"))
    if kind == "execution":
        return ExecutionError(info["data"])
    if kind == "interrupted":
        return InterruptedError(info["data"])
    where = f" on worker {worker}" if worker else ""
    if kind == "server":
        return ServerError(f"{info['type']}{where}: {info['message']}")
    cls = getattr(builtins, info["type"], None)
    message = f"{info['message']} (raised{where}; remote traceback:\n{info['traceback']})"
    if isinstance(cls, type) and issubclass(cls, Exception) and cls.__init__ is Exception.__init__:
        return cls(message)
    return ComfykitError(f"{info['type']}: {message}")


class PoolWorker:
    """Holds one backend in a Ray actor and runs jobs on it, streaming events back (used through RayPool)."""

    def __init__(self, name: str, factory: Callable[..., Any], options: Mapping[str, Any]):
        self.name = name
        self.backend = factory(**dict(options))
        self.loads: Counter[str] = Counter()  # model name -> times a node loading it actually executed
        self.jobs = 0
        self.busy_s = 0.0  # seconds spent inside the backend: wall time minus this is the pool's own cost
        # per-job interrupts: one may arrive before its job reaches run(); remember it until then
        self._lock = threading.Lock()
        self._running: dict[str, Any] = {}
        self._stop: set[str] = set()
        self._finished: deque[str] = deque(maxlen=256)
        try:  # a backend that takes prompt_id= (Engine does) reports under the pool's id from the start
            self._takes_prompt_id = "prompt_id" in inspect.signature(self.backend.submit).parameters
        except (TypeError, ValueError):
            self._takes_prompt_id = False

    def info(self) -> dict[str, Any]:
        """Name, process, GPUs, jobs run and model loads of this worker."""
        import socket

        import ray

        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(),
                "gpu_ids": list(ray.get_gpu_ids()), "jobs": self.jobs, "loads": dict(self.loads),
                "busy_s": self.busy_s}

    def run(self, prompt: dict[str, Any], options: dict[str, Any], prompt_id: str,
            stream: bool = True) -> Iterator[tuple[str, Any]]:
        """Run one prompt; yield ("event", Event)... (if ``stream``) then ("result", Result) or ("error", ...)."""
        def relabel(data: dict[str, Any]) -> dict[str, Any]:
            # the caller knows the job by the pool's prompt id, whatever id the backend chose
            return {**data, "prompt_id": prompt_id} if "prompt_id" in data else data

        self.jobs += 1
        start = time.perf_counter()
        try:
            with self._lock:
                if prompt_id in self._stop:
                    raise InterruptedError({"prompt_id": prompt_id, "node_id": None, "node_type": None,
                                            "executed": []})
            if self._takes_prompt_id:
                options = {**options, "prompt_id": prompt_id}
            job = self.backend.submit(prompt, **options)
            with self._lock:
                self._running[prompt_id] = job
                stop = prompt_id in self._stop
            if stop:
                job.interrupt()
            for event in job:
                # each streamed item is a Ray object: skipping them when nobody listens saves a round trip each
                if stream:
                    yield "event", dataclasses.replace(event, data=relabel(event.data))
            result = job.result()
        except Exception as exc:  # sent back as data: exceptions with extra fields do not pickle faithfully
            self.busy_s += time.perf_counter() - start
            yield "error", encode_error(exc)
            return
        finally:
            with self._lock:
                self._running.pop(prompt_id, None)
                self._stop.discard(prompt_id)
                self._finished.append(prompt_id)
        self.busy_s += time.perf_counter() - start
        for node_id in result.executed:
            inputs = prompt.get(node_id, {}).get("inputs", {})
            self.loads.update(v for k, v in inputs.items() if k in MODEL_INPUTS and isinstance(v, str))
        result.prompt_id = prompt_id
        result.events = [dataclasses.replace(e, data=relabel(e.data)) for e in result.events]
        error, result.error = result.error, None
        yield "result", (result, encode_error(error) if error is not None else None)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the job ``prompt_id`` (even if it has not started yet), or whatever runs now."""
        if prompt_id is None:
            self.backend.interrupt()
            return
        with self._lock:
            job = self._running.get(prompt_id)
            if job is None and prompt_id not in self._finished:
                self._stop.add(prompt_id)
        if job is not None:
            job.interrupt()

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """Drop the backend's caches and models."""
        self.backend.free(unload_models=unload_models, free_memory=free_memory)

    def object_info(self) -> dict[str, Any]:
        """The backend's node schemas."""
        return self.backend.object_info()


def _connect_server(url: str) -> Any:
    from ..client import ComfyServer

    return ComfyServer.connect(url)


def _default_engine(**options: Any) -> Any:
    from ..engine import Engine

    return Engine(**options)
