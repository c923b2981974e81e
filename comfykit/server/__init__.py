"""A ComfyUI-compatible HTTP/WebSocket server over the embedded engine.

>>> import comfykit as ck
>>> server = ck.serve(port=0, models_dir="models")    # doctest: +SKIP
>>> server.url                                          # doctest: +SKIP

aiohttp is imported only when a server is created, so ``import comfykit.server`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["serve", "create_app", "main", "ServerHandle"]


def serve(engine: Any = None, port: int | None = 8188, host: str = "127.0.0.1", **options: Any) -> Any:
    """Serve an Engine over ComfyUI's API in a background thread; see :func:`comfykit.server.runner.serve`."""
    from .runner import serve as _serve

    return _serve(engine, port, host, **options)


def create_app(engine: Any, **options: Any) -> Any:
    """The aiohttp application for ``engine``; see :func:`comfykit.server.app.create_app`."""
    from .app import create_app as _create_app

    return _create_app(engine, **options)


def main(argv: list[str] | None = None) -> int:
    """``python -m comfykit.server`` / ``comfykit serve``: ComfyUI main.py's core flags."""
    from .cli import main as _main

    return _main(argv)


def __getattr__(name: str) -> Any:
    if name == "ServerHandle":
        from .runner import ServerHandle

        return ServerHandle
    raise AttributeError(f"module 'comfykit.server' has no attribute {name!r}")
