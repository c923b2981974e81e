"""Interrupt checks inside long model calls (text-encoder chunks, VAE batches and tiles, image resizes).

The executor installs the running node's check for the duration of the node, in a context variable: model code
deep below a node calls :func:`check` between pieces of work and never needs a handle on the engine. Outside a
run (a notebook calling ``vae.decode`` directly) :func:`check` does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

_current: ContextVar[Callable[[], None] | None] = ContextVar("comfykit_interrupt_check", default=None)


def check() -> None:
    """Raise the engine's Interrupted if the running prompt was interrupted (no-op outside a run)."""
    fn = _current.get()
    if fn is not None:
        fn()


@contextlib.contextmanager
def checking(fn: Callable[[], None]) -> Iterator[None]:
    """Make :func:`check` call ``fn`` inside this block (the executor wraps each node call)."""
    token = _current.set(fn)
    try:
        yield
    finally:
        _current.reset(token)
