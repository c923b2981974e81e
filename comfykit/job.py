"""A submitted run (``Job``) and the interface both backends share (``Backend``)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .events import TERMINAL, Event, EventCallback
from .result import Result

log = logging.getLogger(__name__)

_DONE = object()


class Job:
    """Handle of one submitted prompt: its events as they come, then its :class:`Result`.

    >>> job = engine.submit(wf)                      # doctest: +SKIP
    >>> for event in job:                            # progress, previews, executed... until the end
    ...     print(event.type)
    >>> job.result().image                           # raises ExecutionError / InterruptedError on failure
    """

    def __init__(self, prompt_id: str, callbacks: list[EventCallback] | None = None,
                 interrupt: Callable[[], None] | None = None):
        self.prompt_id = prompt_id
        self._callbacks = [cb for cb in (callbacks or []) if cb is not None]
        self._interrupt = interrupt
        self._queue: queue.Queue[Any] = queue.Queue()
        self._done = threading.Event()
        self._result: Result | None = None
        self._error: BaseException | None = None
        self._iterated = False

    @property
    def listening(self) -> bool:
        """True when someone takes this job's events: it has a callback, or its events are being iterated.

        Backends build step previews only while this holds (``submit(..., previews=None)``), so a plain
        ``run(wf)`` pays nothing for them.
        """
        return bool(self._callbacks) or self._iterated

    # -- producer side (backends) -------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Deliver one event to the callbacks and the iterator; a failing callback never stops the run."""
        for cb in self._callbacks:
            try:
                cb(event)
            except Exception:  # a widget bug must not kill generation
                log.exception("event callback %r failed on %s", cb, event.type)
        self._queue.put(event)

    def finish(self, result: Result | None = None, error: BaseException | None = None) -> None:
        """Mark the job done with its result and, for a failed run, the error ``result()`` raises."""
        self._result, self._error = result, error
        self._done.set()
        self._queue.put(_DONE)

    # -- consumer side (users) ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Event]:
        return self.events()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events until the run ends; ``timeout`` bounds the wait for each next event."""
        self._iterated = True
        while True:
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no event from prompt {self.prompt_id} for {timeout}s") from None
            if item is _DONE:
                return
            yield item

    def result(self, timeout: float | None = None) -> Result:
        """Wait for the run and return its Result, or raise its error."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"prompt {self.prompt_id} did not finish within {timeout}s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def done(self) -> bool:
        return self._done.is_set()

    def interrupt(self) -> None:
        """Ask the backend to stop this run (ends with ``execution_interrupted``)."""
        if self._interrupt is not None and not self.done():
            self._interrupt()

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"Job({self.prompt_id!r}, {state})"


def is_terminal(event: Event) -> bool:
    return event.type in TERMINAL


class Backend:
    """What the embedded Engine and ComfyServer both offer; widgets, sweeps and pools use only this."""

    def submit(self, workflow: Any, *, on_event: EventCallback | None = None, **options: Any) -> Job:
        """Queue a Workflow or API dict and return its Job at once."""
        raise NotImplementedError

    def run(self, workflow: Any, *, on_event: EventCallback | None = None, timeout: float | None = None,
            **options: Any) -> Result:
        """Run a Workflow or API dict to the end and return its Result (raises on failure)."""
        return self.submit(workflow, on_event=on_event, **options).result(timeout)

    def stream(self, workflow: Any, **options: Any) -> Iterator[Event]:
        """Run and yield events as they come; the generator's return value is the Result."""
        job = self.submit(workflow, **options)
        yield from job.events()
        return job.result()

    def interrupt(self) -> None:
        """Stop whatever is running now."""
        raise NotImplementedError

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """Drop caches and unload models."""
        raise NotImplementedError

    def object_info(self) -> dict[str, Any]:
        """The node schemas this backend executes, in ComfyUI's ``/object_info`` format."""
        raise NotImplementedError

    def workflow(self) -> Any:
        """A new empty Workflow validated against this backend's nodes and files."""
        from .graph import Workflow

        return Workflow(schema=self.object_info())
