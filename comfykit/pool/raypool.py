"""``RayPool``: a Backend that spreads jobs over Ray actors, each keeping one engine or ComfyUI server warm."""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..errors import ComfykitError, InterruptedError, ServerError, ValidationError
from ..events import EXECUTION_ERROR, EXECUTION_INTERRUPTED, TERMINAL, Event, EventCallback
from ..job import Backend, Job
from ..result import Result
from .prompts import apply_overrides, models_of, to_prompt
from .routing import gpu_share, pick_task
from .worker import PoolWorker, _connect_server, _default_engine

log = logging.getLogger("comfykit.pool")


def _error_event(prompt_id: str, exc: BaseException) -> Event:
    """The execution_error / execution_interrupted event for a job the pool itself had to end."""
    base = {"prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": []}
    if isinstance(exc, InterruptedError):
        return Event(EXECUTION_INTERRUPTED, base)
    return Event(EXECUTION_ERROR, {**base, "exception_message": str(exc), "exception_type": type(exc).__name__,
                                   "traceback": [], "current_inputs": {}, "current_outputs": {}})



@dataclasses.dataclass
class PoolResult:
    """One finished job of ``map``/``run_many``: its index, the overrides it ran with, its Result or error."""

    index: int
    overrides: Any
    result: Result | None
    error: Exception | None = None
    worker: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        """True when the job ran to success."""
        return self.error is None and self.result is not None and self.result.ok

    @property
    def images(self) -> list[Any]:
        """The job's output images (PIL), empty for a failed job."""
        return self.result.images if self.result is not None else []

    @property
    def image(self) -> Any:
        """The job's first output image, or None."""
        return self.result.image if self.result is not None else None

    def __repr__(self) -> str:
        state = f"error={self.error!r}" if self.error is not None else f"result={self.result!r}"
        return f"PoolResult(index={self.index}, worker={self.worker!r}, {state})"



def _last_line(exc: BaseException) -> str:
    """The final 'Type: message' line of a Ray error, which wraps the remote traceback around it."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


@dataclasses.dataclass(eq=False)
class _Task:
    job: Job
    prompt: dict[str, Any]
    options: dict[str, Any]
    models: frozenset[str]
    index: int = 0
    overrides: Any = None
    on_done: Callable[[_Task], None] | None = None
    stream: bool = True  # forward events as they happen (off for map() jobs nobody listens to)
    ended: bool = False  # a terminal event (success/error/interrupted) was forwarded
    attempts: int = 0
    state: str = "pending"  # pending | running | done
    slot: _Slot | None = None
    failures: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False, kw_only=True)  # keywords only: a positional slip cannot land in the wrong field
class _Slot:
    name: str
    actor: Any
    spec: tuple[Callable[..., Any], Mapping[str, Any]]  # (factory, options) to build a replacement: no default
    alive: bool = True
    task: _Task | None = None
    loaded: frozenset[str] = frozenset()
    jobs: int = 0
    restarts: int = 0
    thread: threading.Thread | None = None



# ---------------------------------------------------------------------------------------------------------------
# The pool
# ---------------------------------------------------------------------------------------------------------------
class RayPool(Backend):
    """A Backend that spreads jobs over Ray actors, each keeping one engine or ComfyUI server warm.

    ``RayPool(workers=4, backend=ck.Engine, models_dir=..., gpus_per_worker=1)`` starts four engine actors
    (extra keywords go to the backend); ``RayPool(servers=["http://a:8188", ...])`` drives existing ComfyUI
    servers, one actor each. ``address`` joins a running Ray cluster; without it (and without ``ray.init``
    done already) a local one is started and stopped again by ``shutdown()``. A job whose worker dies runs again
    elsewhere up to ``max_retries`` times; ``restart_workers`` dead workers in all are replaced by fresh ones.
    """

    def __init__(self, workers: int | None = None, *, backend: Callable[..., Any] | None = None,
                 servers: Sequence[str] | None = None, address: str | None = None,
                 gpus_per_worker: float | None = None, cpus_per_worker: float = 1,
                 num_cpus: int | None = None, max_retries: int = 2, restart_workers: int = 0,
                 startup_timeout: float = 300.0, init_options: Mapping[str, Any] | None = None, **backend_options: Any):
        try:
            import ray
        except ImportError:
            raise ImportError("RayPool needs ray: pip install 'comfykit[ray]' (or pip install 'ray>=2.9')") from None
        if servers is not None and (backend is not None or backend_options):
            raise TypeError("give either servers=[urls] or backend=... with its options, not both")
        if servers is not None and workers is not None and workers != len(servers):
            raise ValueError(f"workers={workers} but {len(servers)} servers: a server pool has one worker per server")
        if isinstance(backend, Backend):
            raise TypeError("backend must be a class or factory (backend=ck.Engine, models_dir=...), not a live "
                            "instance: each worker builds its own in its process")
        if backend is not None and not callable(backend):
            raise TypeError(f"backend must be a class or factory such as ck.Engine, got {backend!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if servers is not None and not list(servers):
            raise ValueError("servers=[] is empty: give at least one ComfyUI URL such as 'http://127.0.0.1:8188'")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.max_retries = max_retries
        self._restarts_left = restart_workers  # replacements of dead workers the pool may still start
        self._startup_timeout = startup_timeout
        self._cond = threading.Condition()
        self._pending: list[_Task] = []
        self._closed = False
        self._owns_ray = False
        self._object_info: dict[str, Any] | None = None

        if not ray.is_initialized():
            opts: dict[str, Any] = {"include_dashboard": False, **dict(init_options or {})}
            if address is not None:
                opts["address"] = address
            else:
                want = (len(servers) if servers is not None else (workers or 1)) * cpus_per_worker
                opts.setdefault("num_cpus", num_cpus or max(os.cpu_count() or 1, int(want + 0.999)))
            ray.init(**opts)
            self._owns_ray = True

        gpus_total = float(ray.cluster_resources().get("GPU", 0))
        if servers is not None:
            urls = [str(u).rstrip("/") for u in servers]
            specs = [(f"server-{i}:{u}", _connect_server, {"url": u}) for i, u in enumerate(urls)]
            # a server worker only forwards HTTP: it needs neither a CPU slot nor a GPU of the Ray cluster
            resources = {"num_cpus": 0, "num_gpus": 0}
        else:
            count = workers if workers is not None else max(1, int(gpus_total))  # default: one per GPU
            factory = backend or _default_engine
            specs = [(f"worker-{i}", factory, backend_options) for i in range(count)]
            resources = {"num_cpus": cpus_per_worker, "num_gpus": gpu_share(gpus_per_worker, gpus_total, count)}
        self.gpus_per_worker = resources["num_gpus"]
        # max_concurrency > 1 lets interrupt()/info() reach a worker while it runs a job
        actor_cls = ray.remote(max_concurrency=4, **resources)(PoolWorker)
        self._actor_cls = actor_cls
        self._slots = [_Slot(name=name, actor=actor_cls.remote(name, fn, opts), spec=(fn, opts))
                       for name, fn, opts in specs]
        self._wait_ready(ray, startup_timeout, resources)
        for slot in self._slots:
            slot.thread = threading.Thread(target=self._serve, args=(slot,), name=f"comfykit-pool-{slot.name}",
                                           daemon=True)
            slot.thread.start()

    def _wait_ready(self, ray: Any, timeout: float, resources: Mapping[str, Any]) -> None:
        refs = {slot.actor.info.remote(): slot for slot in self._slots}
        ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                self.shutdown()
                raise ServerError(f"pool worker {refs[ref].name} failed to start its backend: "
                                  f"{_last_line(exc)}") from None
        if waiting:
            self.shutdown()
            raise ServerError(f"{len(waiting)} pool worker(s) did not start within {timeout}s; each asks for "
                              f"{dict(resources)} and the cluster has {ray.cluster_resources()}; lower "
                              "gpus_per_worker/cpus_per_worker or workers")

    # -- Backend interface ------------------------------------------------------------------------------------
    def submit(self, workflow: Any, *, on_event: EventCallback | None = None, **options: Any) -> Job:
        """Queue a Workflow or API dict on the pool and return its Job at once."""
        return self._submit(to_prompt(workflow), on_event=on_event, options=options).job

    def interrupt(self) -> None:
        """Stop the whole pool: cancel every queued job and interrupt every running one."""
        with self._cond:
            cancelled, self._pending = self._pending, []
            running = [(s.actor, s.task.job.prompt_id) for s in self._slots if s.alive and s.task is not None]
        for task in cancelled:
            self._finish_cancelled(task)
        for actor, prompt_id in running:
            actor.interrupt.remote(prompt_id)  # by id: a job that is only just starting is stopped too

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """Ask every worker to drop its caches and models."""
        import ray

        for slot in [s for s in self._slots if s.alive]:
            try:
                ray.get(slot.actor.free.remote(unload_models, free_memory))
            except ray.exceptions.RayActorError:
                continue  # died meanwhile: its driver thread retires it with its next job
            slot.loaded = frozenset()

    def object_info(self) -> dict[str, Any]:
        """The node schemas of the first live worker's backend (workers are assumed alike)."""
        import ray

        if self._object_info is None:
            self._object_info = ray.get(self._alive_slots()[0].actor.object_info.remote())
        return self._object_info

    # -- many jobs --------------------------------------------------------------------------------------------
    def map(self, workflows: Iterable[Any], *, return_exceptions: bool = False, ordered: bool = False,
            progress: bool = True, on_event: EventCallback | None = None, overrides: Sequence[Any] | None = None,
            **options: Any) -> Iterator[PoolResult]:
        """Queue every workflow now; yield a PoolResult per job in completion order (``ordered`` for input order).

        A failed job raises its error when reached unless ``return_exceptions=True``, which yields it as
        ``PoolResult.error`` instead. Leaving the loop early cancels the jobs that have not started.
        """
        workflows = list(workflows)
        tags = list(overrides) if overrides is not None else [None] * len(workflows)
        if len(tags) != len(workflows):
            raise ValueError(f"{len(workflows)} workflows but {len(tags)} overrides")
        done: queue.Queue[_Task] = queue.Queue()
        tasks: list[_Task] = []
        try:
            for i, wf in enumerate(workflows):
                try:
                    prompt = to_prompt(wf)
                except ValidationError as exc:  # an invalid Workflow fails as its own job, not the whole batch
                    task = _Task(Job(str(uuid.uuid4())), {}, {}, frozenset(), i, tags[i], done.put)
                    tasks.append(task)
                    self._finish(task, None, exc)
                    continue
                tasks.append(self._submit(prompt, on_event=on_event, options=options, index=i, overrides=tags[i],
                                          on_done=done.put, stream=on_event is not None))
        except BaseException:
            for task in tasks:
                self._cancel(task)
            raise
        return self._collect(tasks, done, return_exceptions, ordered, progress)

    def run_many(self, workflow: Any, overrides: Sequence[Mapping[Any, Any]], **kwargs: Any) -> Iterator[PoolResult]:
        """Run ``workflow`` once per ``{input_ref: value}`` dict of ``overrides``; see :meth:`map`.

        >>> for r in pool.run_many(wf, overrides=[{ks.seed: s} for s in range(8)]):   # doctest: +SKIP
        ...     print(r.index, r.overrides, r.image.size)
        """
        base = to_prompt(workflow)
        overrides = list(overrides)
        prompts = [apply_overrides(base, o) for o in overrides]
        return self.map(prompts, overrides=overrides, **kwargs)

    def _collect(self, tasks: list[_Task], done: queue.Queue[_Task], return_exceptions: bool, ordered: bool,
                 progress: bool) -> Iterator[PoolResult]:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(tasks), desc="comfykit pool", unit="job")
        finished: dict[int, PoolResult] = {}
        next_index, failed = 0, 0
        try:
            for _ in range(len(tasks)):
                task = done.get()
                item = self._outcome(task)
                failed += item.error is not None
                if bar is not None:
                    bar.update(1)
                    if failed:
                        bar.set_postfix(failed=failed)
                if not ordered:
                    yield self._check(item, return_exceptions)
                    continue
                finished[item.index] = item
                while next_index in finished:
                    yield self._check(finished.pop(next_index), return_exceptions)
                    next_index += 1
        finally:
            if bar is not None:
                bar.close()
            for task in tasks:
                self._cancel(task)

    @staticmethod
    def _outcome(task: _Task) -> PoolResult:
        worker = task.slot.name if task.slot is not None else None
        try:
            result, error = task.job.result(), None
        except Exception as exc:
            result, error = None, exc
        return PoolResult(task.index, task.overrides, result, error, worker, task.attempts)

    @staticmethod
    def _check(item: PoolResult, return_exceptions: bool) -> PoolResult:
        if item.error is not None and not return_exceptions:
            raise item.error
        return item

    # -- introspection and lifetime ----------------------------------------------------------------------------
    @property
    def actors(self) -> list[Any]:
        """The Ray actor handles of the live workers."""
        return [s.actor for s in self._alive_slots(required=False)]

    @property
    def workers(self) -> dict[str, Any]:
        """Live worker name -> its Ray actor handle."""
        return {s.name: s.actor for s in self._alive_slots(required=False)}

    def running(self) -> dict[str, str]:
        """Worker name -> prompt id of the job it runs now (idle workers are left out)."""
        with self._cond:
            return {s.name: s.task.job.prompt_id for s in self._slots if s.alive and s.task is not None}

    def stats(self) -> list[dict[str, Any]]:
        """Per worker: name, alive, jobs, models held, ``loads`` (model -> times loaded), ``busy_s`` (backend time)."""
        import ray

        rows = []
        for slot in self._slots:
            row = {"name": slot.name, "alive": slot.alive, "jobs": slot.jobs, "loaded": sorted(slot.loaded),
                   "busy": slot.task is not None, "restarts": slot.restarts}
            if slot.alive:
                try:
                    info = ray.get(slot.actor.info.remote(), timeout=30)
                    row.update(pid=info["pid"], host=info["host"], gpu_ids=info["gpu_ids"], loads=info["loads"],
                               busy_s=info["busy_s"])
                except ray.exceptions.RayError:
                    row["alive"] = False
            rows.append(row)
        return rows

    def shutdown(self) -> None:
        """Cancel queued jobs, stop the workers and, if the pool started Ray, stop Ray too."""
        import ray

        with self._cond:
            if self._closed:
                return
            self._closed = True
            cancelled, self._pending = self._pending, []
            self._cond.notify_all()
        for task in cancelled:
            self._finish_cancelled(task)
        for slot in getattr(self, "_slots", []):
            if slot.alive:
                slot.alive = False
                ray.kill(slot.actor)
        for slot in getattr(self, "_slots", []):
            if slot.thread is not None and slot.thread is not threading.current_thread():
                slot.thread.join(timeout=30)
        if self._owns_ray:
            ray.shutdown()

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        alive = sum(s.alive for s in self._slots)
        busy = sum(s.task is not None for s in self._slots)
        return (f"RayPool(workers={len(self._slots)}, alive={alive}, running={busy}, pending={len(self._pending)}"
                f"{', closed' if self._closed else ''})")

    # -- scheduling --------------------------------------------------------------------------------------------
    def _alive_slots(self, required: bool = True) -> list[_Slot]:
        alive = [s for s in self._slots if s.alive]
        if required and not alive:
            raise ServerError("every worker of the pool has died or been shut down; create a new RayPool")
        return alive

    def _submit(self, prompt: dict[str, Any], *, on_event: EventCallback | None, options: Mapping[str, Any],
                index: int = 0, overrides: Any = None, on_done: Callable[[_Task], None] | None = None,
                stream: bool = True) -> _Task:
        holder: list[_Task] = []
        job = Job(str(uuid.uuid4()), callbacks=[on_event],
                  interrupt=lambda: self._cancel(holder[0], interrupt_running=True))
        task = _Task(job, prompt, dict(options), models_of(prompt), index, overrides, on_done, stream)
        holder.append(task)
        with self._cond:
            if self._closed:
                raise ServerError("this RayPool was shut down; create a new one")
            self._alive_slots()
            self._pending.append(task)
            self._cond.notify_all()
        return task

    def _cancel(self, task: _Task, interrupt_running: bool = False) -> None:
        with self._cond:
            if task.state == "pending" and task in self._pending:
                self._pending.remove(task)
            elif task.state == "running" and interrupt_running and task.slot is not None:
                task.slot.actor.interrupt.remote(task.job.prompt_id)
                return
            else:
                return
        self._finish_cancelled(task)

    def _finish_cancelled(self, task: _Task) -> None:
        error = InterruptedError({"prompt_id": task.job.prompt_id, "node_id": None, "node_type": None,
                                  "executed": []})
        self._finish(task, None, error)

    def _finish(self, task: _Task, result: Result | None, error: Exception | None) -> None:
        with self._cond:
            if task.state == "done":
                return
            task.state = "done"
            slot = task.slot
            if slot is not None and slot.task is task:  # free the worker before the caller wakes up
                slot.task = None
                slot.jobs += 1
        if error is not None and result is None and not task.ended:  # one terminal event per job, always
            task.job.emit(_error_event(task.job.prompt_id, error))
        if result is not None:
            result.error = error
        task.job.finish(result, error)
        if task.on_done is not None:
            task.on_done(task)

    def _serve(self, slot: _Slot) -> None:
        """One driver thread per worker: take the best pending task for it, run it, repeat."""
        while True:
            with self._cond:
                while not self._closed and slot.alive and not self._pending:
                    self._cond.wait()
                if self._closed or not slot.alive:
                    return
                others = [s.loaded for s in self._slots if s is not slot and s.alive]
                task = self._pending.pop(pick_task(self._pending, slot.loaded, others))
                task.state, task.slot, slot.task = "running", slot, task
                task.attempts += 1
            try:
                self._run_on(slot, task)
            except Exception as exc:  # a bug here must fail the job loudly, never drop it
                log.exception("pool worker %s failed to run a job", slot.name)
                self._finish(task, None, exc)
            finally:
                with self._cond:
                    if slot.task is task:  # still set when the job went back to the queue
                        slot.task = None

    def _run_on(self, slot: _Slot, task: _Task) -> None:
        import ray

        # previews cross the process only for a job someone listens to now (a callback, or iterating its Job)
        previews = task.stream and task.job.listening
        call = slot.actor.run.options(num_returns="streaming")  # explicit: older Ray needs it for generators
        try:
            for ref in call.remote(task.prompt, task.options, task.job.prompt_id, task.stream, previews):
                kind, payload = ray.get(ref)
                if kind == "event":
                    task.ended = task.ended or payload.type in TERMINAL
                    task.job.emit(payload)
                elif kind == "result":  # errors pickle with their data: the Result's error arrives as raised
                    slot.loaded = task.models
                    self._finish(task, payload, payload.error)
                    return
                else:
                    if isinstance(payload, ServerError):  # the worker's backend (a server) is gone
                        self._worker_lost(slot, task, str(payload))
                    else:
                        if not isinstance(payload, ValidationError):
                            slot.loaded = task.models
                        self._finish(task, None, payload)
                    return
            self._finish(task, None, ComfykitError(f"worker {slot.name} ended the job without a result"))
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.RaySystemError,
                getattr(ray.exceptions, "ActorUnavailableError", ray.exceptions.RayActorError)) as exc:
            self._worker_lost(slot, task, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        except ray.exceptions.RayTaskError as exc:
            self._finish(task, None, ComfykitError(f"worker {slot.name} raised: {exc}"))

    def _worker_lost(self, slot: _Slot, task: _Task, why: str) -> None:
        """Replace (while ``restart_workers`` allow) or retire a dead worker; requeue its job while retries remain."""
        import ray

        log.warning("pool worker %s lost (%s)", slot.name, why)
        task.failures.append(f"{slot.name}: {why}")
        self._kill(slot.actor)  # a server worker may still live: free its resources
        with self._cond:
            restart = not self._closed and slot.alive and self._restarts_left > 0
            requeued = restart and task.attempts <= self.max_retries
            if restart:
                self._restarts_left -= 1
                slot.loaded = frozenset()
            if requeued:
                task.state, task.slot = "pending", None
                self._pending.insert(0, task)
                self._cond.notify_all()
        if not restart:
            self._retire(slot, task, why)
            return
        # decided under the lock: once requeued, another worker may already have taken the task (state running)
        if not requeued:
            self._finish(task, None, ServerError(f"job {task.index} was lost: it failed on {task.attempts} "
                                                 f"worker(s) (max_retries={self.max_retries}); "
                                                 + "; ".join(task.failures)))
        factory, options = slot.spec
        actor = self._actor_cls.remote(slot.name, factory, options)
        try:
            ray.get(actor.info.remote(), timeout=self._startup_timeout)
        except Exception as exc:  # the replacement did not come up: run on with the others
            self._kill(actor)
            self._retire(slot, None, f"{why}; its replacement failed: {_last_line(exc)}")
            return
        with self._cond:
            keep = not self._closed and slot.alive  # shutdown() may have run while the replacement started
            if keep:
                slot.actor = actor
                slot.restarts += 1
        if not keep:
            self._kill(actor)
            return
        log.warning("pool worker %s replaced (restart %d)", slot.name, slot.restarts)

    @staticmethod
    def _kill(actor: Any) -> None:
        import ray

        try:
            ray.kill(actor)
        except Exception:  # already gone
            pass

    def _retire(self, slot: _Slot, task: _Task | None, why: str) -> None:
        """Take a worker out of the pool; its job (if any) goes back to the queue while retries remain."""
        with self._cond:
            slot.alive = False
            alive = [s for s in self._slots if s.alive]
            retry = task is not None and not self._closed and alive and task.attempts <= self.max_retries
            if retry:
                task.state, task.slot = "pending", None
                self._pending.insert(0, task)
            orphans = [] if alive or self._closed else self._pending
            if orphans:
                self._pending = []
            self._cond.notify_all()
        if task is not None and not retry:
            if self._closed:
                reason = "the pool was shut down while the job ran"
            elif not alive:
                reason = "every worker of the pool has died"
            else:
                reason = f"it failed on {task.attempts} worker(s) (max_retries={self.max_retries})"
            self._finish(task, None, ServerError(f"job {task.index} was lost: {reason}; "
                                                 + "; ".join(task.failures)))
        for other in orphans:
            self._finish(other, None, ServerError("job could not run: every worker of the pool has died; "
                                                  f"last failure {slot.name}: {why}"))
