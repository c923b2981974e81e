"""The prompt queue and history of the HTTP server, with ComfyUI's numbering, ordering and history shape."""

from __future__ import annotations

import heapq
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

# Keys the ComfyUI frontend may put into extra_data that must never be echoed back by /queue or /history.
_SENSITIVE = ("auth_token_comfy_org", "api_key_comfy_org")


class PromptQueue:
    """A thread-safe priority queue of prompts plus the bounded history of finished ones.

    Items are ComfyUI's 5-lists ``[number, prompt_id, prompt, extra_data, outputs_to_execute]``; the lowest
    ``number`` runs first. ``on_change(queue_remaining)`` is called (outside the lock) after every change, which
    is where the server broadcasts its ``status`` message.
    """

    def __init__(self, max_history: int = 10000, on_change: Callable[[int], None] | None = None, *,
                 max_bytes: int = 256 << 20):
        if max_history < 1:
            raise ValueError(f"max_history must be at least 1, got {max_history}")
        self.max_history = max_history
        self.max_bytes = max_bytes
        self._sizes: dict[str, int] = {}  # JSON bytes of each history entry
        self._history_bytes = 0
        self._active: dict[str, int] = {}  # prompt ids pending or running, with how many items carry each
        self._on_change = on_change
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, list[Any]]] = []  # (number, tie-breaker, item)
        self._seq = 0
        self._running: dict[int, list[Any]] = {}
        self._task_counter = 0
        self._history: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # -- producer side -------------------------------------------------------------------------------------
    def put(self, item: list[Any]) -> None:
        """Queue ``[number, prompt_id, prompt, extra_data, outputs]``."""
        with self._cond:
            # The sequence number keeps equal numbers FIFO and never lets heapq compare two prompt dicts.
            heapq.heappush(self._heap, (item[0], self._seq, item))
            self._seq += 1
            self._active[item[1]] = self._active.get(item[1], 0) + 1
            remaining = self._remaining()
            self._cond.notify()
        self._changed(remaining)

    # -- worker side ---------------------------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> tuple[list[Any], int] | None:
        """Take the next item to run and mark it running; None if nothing came within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._heap, timeout):
                return None
            _, _, item = heapq.heappop(self._heap)
            task_id = self._task_counter
            self._task_counter += 1
            self._running[task_id] = item
            remaining = self._remaining()
        self._changed(remaining)
        return item, task_id

    def task_done(self, task_id: int, history_item: dict[str, Any]) -> None:
        """Move a running item into the history (dropping the oldest beyond ``max_history``)."""
        with self._cond:
            item = self._running.pop(task_id)
            prompt_id = item[1]
        entry = {"prompt": _public_item(item)}
        entry.update(history_item)
        size = _size(entry)  # outside the lock: a big prompt takes milliseconds to measure
        with self._cond:
            self._release(prompt_id)  # only now, so known() sees the id at every moment
            self._forget(prompt_id)
            # Oldest first, until both the count and the bytes fit (the newest entry always stays).
            while self._history and (len(self._history) >= self.max_history
                                     or self._history_bytes + size > self.max_bytes):
                self._forget(next(iter(self._history)))
            self._history[prompt_id] = entry
            self._sizes[prompt_id] = size
            self._history_bytes += size
            remaining = self._remaining()
        self._changed(remaining)

    # -- inspection and editing ----------------------------------------------------------------------------
    def queue_remaining(self) -> int:
        """Pending plus running prompts, as ComfyUI's ``exec_info.queue_remaining``."""
        with self._cond:
            return self._remaining()

    def known(self, prompt_id: str) -> bool:
        """True when ``prompt_id`` is pending, running or in the history."""
        with self._cond:
            return prompt_id in self._active or prompt_id in self._history

    def history_bytes(self) -> int:
        """JSON size of the history in bytes (what ``max_bytes`` bounds)."""
        with self._cond:
            return self._history_bytes

    def running_ids(self) -> list[str]:
        with self._cond:
            return [item[1] for item in self._running.values()]

    def current_queue(self) -> tuple[list[list[Any]], list[list[Any]]]:
        """(running, pending) items; pending in heap order as ComfyUI answers ``GET /queue``."""
        with self._cond:
            running = [_public_item(item) for item in self._running.values()]
            pending = [_public_item(entry[2]) for entry in self._heap]
        return running, pending

    def delete(self, prompt_ids: list[str]) -> int:
        """Drop pending prompts by id (running ones are left alone); returns how many went."""
        wanted = set(map(str, prompt_ids))
        with self._cond:
            before = len(self._heap)
            for entry in self._heap:
                if entry[2][1] in wanted:
                    self._release(entry[2][1])
            self._heap = [entry for entry in self._heap if entry[2][1] not in wanted]
            heapq.heapify(self._heap)
            removed = before - len(self._heap)
            remaining = self._remaining()
        if removed:
            self._changed(remaining)
        return removed

    def wipe(self) -> None:
        """Drop every pending prompt."""
        with self._cond:
            for entry in self._heap:
                self._release(entry[2][1])
            self._heap = []
            remaining = self._remaining()
        self._changed(remaining)

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None,
                    offset: int = -1) -> dict[str, Any]:
        """History items oldest first; ``max_items`` without ``offset`` gives the newest ``max_items``.

        Items are never changed once stored, so they are returned without copying."""
        with self._cond:
            if prompt_id is not None:
                item = self._history.get(prompt_id)
                return {prompt_id: item} if item is not None else {}
            if offset < 0 and max_items is not None:
                offset = len(self._history) - max_items
            out: dict[str, Any] = {}
            for i, (key, value) in enumerate(self._history.items()):
                if i < offset:
                    continue
                if max_items is not None and len(out) >= max_items:
                    break
                out[key] = value
            return out

    def delete_history(self, prompt_ids: list[str]) -> None:
        with self._cond:
            for prompt_id in prompt_ids:
                self._forget(str(prompt_id))

    def wipe_history(self) -> None:
        with self._cond:
            self._history.clear()
            self._sizes.clear()
            self._history_bytes = 0

    def _forget(self, prompt_id: str) -> None:
        if self._history.pop(prompt_id, None) is not None:
            self._history_bytes -= self._sizes.pop(prompt_id, 0)

    def _release(self, prompt_id: str) -> None:
        count = self._active.get(prompt_id, 0) - 1
        if count > 0:
            self._active[prompt_id] = count
        else:
            self._active.pop(prompt_id, None)

    def _remaining(self) -> int:
        return len(self._heap) + len(self._running)

    def _changed(self, remaining: int) -> None:
        if self._on_change is not None:
            self._on_change(remaining)


def _size(entry: dict[str, Any]) -> int:
    """Approximate bytes an entry takes, as the JSON /history sends (non-JSON values count by their repr)."""
    return len(json.dumps(entry, separators=(",", ":"), default=repr))


def _public_item(item: list[Any]) -> list[Any]:
    """The queue item as clients may see it: extra_data without credentials."""
    number, prompt_id, prompt, extra_data, outputs = item[:5]
    extra = {k: v for k, v in extra_data.items() if k not in _SENSITIVE}
    return [number, prompt_id, prompt, extra, outputs]
