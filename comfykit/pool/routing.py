"""Scheduling decisions of the pool: which queued job a free worker takes, and how many GPUs a worker asks for."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("comfykit.pool")


def pick_task(pending: Sequence[Any], loaded: frozenset[str], others_loaded: Sequence[frozenset[str]]) -> int | None:
    """Index of the pending task a free worker should take next, or None when nothing is pending.

    Prefer the oldest task whose models this worker already holds; else the oldest one no other worker holds
    the models for (so it does not steal work another worker could do without loading); else the oldest task,
    so a free worker never idles while work waits.
    """
    if not pending:
        return None
    for i, task in enumerate(pending):
        if task.models <= loaded:
            return i
    for i, task in enumerate(pending):
        if not any(task.models <= other for other in others_loaded):
            return i
    return 0



def gpu_share(requested: float | None, available: float, workers: int) -> float:
    """GPUs each worker asks Ray for: ``requested``, or a fair share (at most 1); 0 when the cluster has none."""
    if available <= 0:
        if requested:
            log.warning("gpus_per_worker=%s but the Ray cluster has no GPU: workers run on the CPU", requested)
        return 0
    if requested is None:
        return min(1.0, available / workers)
    if requested * workers > available:
        log.warning("%d workers x %s GPUs exceed the cluster's %s GPUs: the pool waits startup_timeout for more",
                    workers, requested, available)
    return requested
