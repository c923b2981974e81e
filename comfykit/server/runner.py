"""Run the app: in a background thread with its own event loop (notebooks) or blocking (the CLI)."""

from __future__ import annotations

import asyncio
import html
import logging
import threading
from typing import TYPE_CHECKING, Any

from ..errors import ServerError

if TYPE_CHECKING:
    from .protocol import ServerEngine

log = logging.getLogger(__name__)


class ServerHandle:
    """A running comfykit server: ``.url``, ``.stop()``, usable as a context manager.

    >>> with ck.serve(port=0) as server:            # doctest: +SKIP
    ...     requests.get(server.url + "/system_stats").json()
    """

    def __init__(self, engine: ServerEngine, app: Any, hosts: list[str], port: int):
        self.engine = engine
        self.app = app
        self.hosts = hosts
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Any = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self.hosts[0]

    @property
    def url(self) -> str:
        """``http://host:port`` to reach the server from this machine."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # a wildcard bind is reachable on loopback
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def state(self) -> Any:
        from .app import STATE

        return self.app[STATE]

    def set_auth(self, auth: Any) -> None:
        """Require credentials on every request (``auth.check(request)`` answers a refusal or None)."""
        self.state.auth = auth

    def share(self, **options: Any) -> Any:
        """Expose this server through ngrok with auth in front; see :func:`comfykit.share.share`."""
        from ..share import share

        return share(self, **options)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop serving, finish the worker, and join the background thread."""
        loop, runner = self._loop, self._runner
        if loop is None or loop.is_closed():
            return
        if runner is not None:
            try:
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout)
            except Exception as exc:  # a hung cleanup must not hang the caller forever
                log.warning("server cleanup did not finish cleanly: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        self._runner = None

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        running = self._loop is not None and not self._loop.is_closed() and self._runner is not None
        return f"ServerHandle({self.url!r}, {'running' if running else 'stopped'})"

    def _repr_html_(self) -> str:
        url = html.escape(self.url)
        return f'comfykit server at <a href="{url}" target="_blank">{url}</a>'


async def _start(app: Any, hosts: list[str], port: int) -> tuple[Any, int]:
    from aiohttp import web

    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        for host in hosts:
            site = web.TCPSite(runner, host, port)
            await site.start()
            if port == 0:  # the OS picked one; bind the other addresses to the same
                port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    except OSError as exc:
        await runner.cleanup()
        raise ServerError(f"cannot listen on {', '.join(hosts)} port {port}: {exc.strerror or exc}; "
                          "pick another port (port=0, or --port 0, picks a free one)") from exc
    return runner, port


def _hosts(host: str | list[str]) -> list[str]:
    hosts = host.split(",") if isinstance(host, str) else list(host)
    return [h.strip() for h in hosts if h.strip()] or ["127.0.0.1"]


def start_background(engine: ServerEngine, app: Any, host: str | list[str] = "127.0.0.1", port: int | None = 8188,
                     timeout: float = 60.0) -> ServerHandle:
    """Serve ``app`` from a daemon thread with its own event loop and return once it listens."""
    hosts = _hosts(host)
    handle = ServerHandle(engine, app, hosts, port or 0)
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        handle._loop = loop
        asyncio.set_event_loop(loop)
        try:
            handle._runner, handle.port = loop.run_until_complete(_start(app, hosts, port or 0))
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    handle._thread = threading.Thread(target=run, name="comfykit-server", daemon=True)
    handle._thread.start()
    if not ready.wait(timeout):
        raise ServerError(f"the server did not start within {timeout}s")
    if failure:
        raise failure[0]
    return handle


def run_blocking(engine: ServerEngine, app: Any, host: str | list[str] = "127.0.0.1", port: int | None = 8188, *,
                 print_url: bool = True, auto_launch: bool = False) -> None:
    """Serve ``app`` in this thread until Ctrl-C (the CLI's mode)."""
    hosts = _hosts(host)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    runner, port = loop.run_until_complete(_start(app, hosts, port or 0))
    handle = ServerHandle(engine, app, hosts, port)
    if print_url:
        print("Starting server\n", flush=True)
        for h in hosts:
            shown = f"[{h}]" if ":" in h else h
            print(f"To see the GUI go to: http://{shown}:{port}", flush=True)
    if auto_launch:
        import webbrowser

        webbrowser.open(handle.url)
    try:  # a launcher's terminate() should stop the worker and close sockets like Ctrl-C does
        import signal

        loop.add_signal_handler(signal.SIGTERM, loop.stop)
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
        pass
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        print("\nStopped server", flush=True)
    finally:
        loop.run_until_complete(runner.cleanup())
        loop.close()


def serve(engine: ServerEngine | None = None, port: int | None = 8188, host: str = "127.0.0.1", *, block: bool = False,
          max_upload_size_mb: float = 100, enable_cors: str | None = None, preview_size: int = 512,
          max_history: int = 10000, **engine_kwargs: Any) -> ServerHandle | None:
    """Serve an Engine with ComfyUI's HTTP/WebSocket API; returns a handle (``.url``, ``.stop()``).

    ``engine`` None builds ``comfykit.Engine(**engine_kwargs)`` (any object meeting
    :class:`~comfykit.server.protocol.ServerEngine` will do); ``port`` 0 or None picks a free port;
    ``block=True`` serves in this thread until Ctrl-C and returns None.

    >>> server = ck.serve(port=0, models_dir="models")   # doctest: +SKIP
    >>> server.url                                         # doctest: +SKIP
    'http://127.0.0.1:40123'
    """
    from .app import create_app

    if engine is None:
        from ..engine import Engine

        engine = Engine(**engine_kwargs)
    elif engine_kwargs:
        raise TypeError(f"engine options {sorted(engine_kwargs)} are only used when serve() builds the engine; "
                        "pass them to Engine(...) instead")
    else:
        from .protocol import check_engine

        check_engine(engine)
    app = create_app(engine, max_upload_size_mb=max_upload_size_mb, enable_cors=enable_cors,
                     preview_size=preview_size, max_history=max_history)
    if block:
        run_blocking(engine, app, host, port)
        return None
    return start_background(engine, app, host, port)
