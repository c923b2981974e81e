"""The pool's worker: a Ray actor holding one backend, streaming a job's events and its Result back.

Results, events and comfykit errors pickle with their data (``ValidationError``'s 400 body, ``ExecutionError``'s
message), so they cross the process boundary as they are.
"""

from __future__ import annotations

import inspect
import os
import pickle
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import ComfykitError, InterruptedError, ServerError
from .prompts import MODEL_INPUTS


def _worker_failure_types() -> tuple[type[BaseException], ...]:
    """Errors that say the worker's backend (a process or a server) is gone, not that the job is bad."""
    types: list[type[BaseException]] = [ServerError, ConnectionError]
    # only from libraries already loaded: a backend that never used them cannot have raised their errors
    requests = sys.modules.get("requests")
    if requests is not None:
        types.append(requests.exceptions.RequestException)
    urllib3 = sys.modules.get("urllib3")
    if urllib3 is not None:
        types.append(urllib3.exceptions.HTTPError)
    websocket = sys.modules.get("websocket")
    if websocket is not None:
        types.append(websocket.WebSocketException)
    return tuple(types)


def portable_error(exc: BaseException, worker: str = "") -> Exception:
    """``exc`` as the driver should see it: a comfykit error as raised, a lost backend as ServerError.

    Other exceptions travel as they are when they pickle (with the remote traceback added as a note), else as a
    ComfykitError naming their type and message.
    """
    where = f" on worker {worker}" if worker else ""
    if isinstance(exc, ComfykitError) and not isinstance(exc, ServerError):
        return exc
    if isinstance(exc, _worker_failure_types()):
        return ServerError(f"{type(exc).__name__}{where}: {exc}")
    remote = "".join(traceback.format_exception(exc))
    try:
        exc.add_note(f"raised{where}; remote traceback:\n{remote}")
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - an exception class that does not round-trip: send its words instead
        return ComfykitError(f"{type(exc).__name__}{where}: {exc} (remote traceback:\n{remote})")
    return exc if isinstance(exc, Exception) else ComfykitError(f"{type(exc).__name__}{where}: {exc}")


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
        try:  # a backend that takes prompt_id= / previews= (Engine does) gets them
            params = inspect.signature(self.backend.submit).parameters
        except (TypeError, ValueError):
            params = {}
        self._takes_prompt_id = "prompt_id" in params
        self._takes_previews = "previews" in params

    def info(self) -> dict[str, Any]:
        """Name, process, GPUs, jobs run and model loads of this worker."""
        import socket

        import ray

        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(),
                "gpu_ids": list(ray.get_gpu_ids()), "jobs": self.jobs, "loads": dict(self.loads),
                "busy_s": self.busy_s}

    def run(self, prompt: dict[str, Any], options: dict[str, Any], prompt_id: str, stream: bool = True,
            previews: bool = False) -> Iterator[tuple[str, Any]]:
        """Run one prompt; yield ("event", Event)... (if ``stream``) then ("result", Result) or ("error", exc).

        ``previews``: someone on the driver listens for step previews; without it none are built or sent.
        """
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
            if self._takes_previews:
                options = {"previews": previews, **options}
            job = self.backend.submit(prompt, **options)
            with self._lock:
                self._running[prompt_id] = job
                stop = prompt_id in self._stop
            if stop:
                job.interrupt()
            for event in job:
                # each streamed item is a Ray object: skipping them when nobody listens saves a round trip each
                if stream:
                    event = event.with_data(relabel(event.data))
                    yield "event", event if previews else event.without_preview()
            result = job.result()
        except Exception as exc:
            self.busy_s += time.perf_counter() - start
            yield "error", portable_error(exc, self.name)
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
        result.events = [e.with_data(relabel(e.data)) for e in result.events]
        if result.error is not None:
            result.error = portable_error(result.error, self.name)
        yield "result", result

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
