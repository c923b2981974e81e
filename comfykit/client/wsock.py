"""One ComfyUI ``/ws`` connection per client id, read by a thread that reconnects after drops."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import websocket  # websocket-client

log = logging.getLogger(__name__)

#: What we tell the server on connect: we understand preview frames with metadata (type 4).
FEATURE_FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}


class EventSocket:
    """Reads ``/ws?clientId=...`` in a daemon thread and hands each message to ``on_text`` / ``on_binary``.

    A dropped connection is reopened with the same client id (ComfyUI then replaces the old socket), so the
    prompts of this client keep their events; ``on_reconnect`` runs after each reopen so the owner can fetch
    what was missed from ``/history``. ``on_idle`` runs whenever the socket was quiet for ``idle`` seconds.
    """

    def __init__(self, url: str, client_id: str, *, preview_format: str = "metadata",
                 on_text: Callable[[dict[str, Any]], None], on_binary: Callable[[bytes], None],
                 on_idle: Callable[[], None] = lambda: None, on_reconnect: Callable[[], None] = lambda: None,
                 idle: float = 0.2, connect_timeout: float = 10.0, headers: dict[str, str] | None = None):
        base = url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        self.ws_url = f"{base}/ws?clientId={client_id}"
        self.client_id = client_id
        self.preview_format = preview_format
        self.on_text, self.on_binary = on_text, on_binary
        self.on_idle, self.on_reconnect = on_idle, on_reconnect
        self.idle = idle
        self.connect_timeout = connect_timeout
        self.headers = [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.connected = threading.Event()
        self.reconnects = 0
        self.server_flags: dict[str, Any] = {}
        self._ws: websocket.WebSocket | None = None
        self._closing = threading.Event()
        self._paused_until = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect now (raising when the server refuses) and start the reader thread."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._closing.clear()
            self._open()
            self._thread = threading.Thread(target=self._read_loop, name=f"comfykit-ws-{self.client_id[:8]}",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the reader thread and close the connection."""
        self._closing.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close(timeout=1)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        self._thread = None
        self.connected.clear()

    def drop(self, pause: float = 0.0) -> None:
        """Cut the connection as a network failure would; reconnect no sooner than ``pause`` s from now."""
        self._paused_until = time.monotonic() + pause
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.shutdown()

    @property
    def uses_metadata_previews(self) -> bool:
        """True when the server confirmed it sends type-4 previews to us (so no legacy frames follow)."""
        return self.preview_format == "metadata" and bool(self.server_flags.get("supports_preview_metadata"))

    # -- internals ----------------------------------------------------------------------------------------
    def _open(self) -> None:
        ws = websocket.WebSocket(enable_multithread=True)
        # no Origin header: ComfyUI's origin check only has to judge what browsers send
        ws.connect(self.ws_url, timeout=self.connect_timeout, header=self.headers, suppress_origin=True)
        if self.preview_format == "metadata":
            # ComfyUI only honours feature flags sent as the very first client message
            ws.send(json.dumps(FEATURE_FLAGS))
        else:
            self.server_flags = {}
        ws.settimeout(self.idle)
        self._ws = ws
        self.connected.set()

    def _read_loop(self) -> None:
        while not self._closing.is_set():
            ws = self._ws
            try:
                if ws is None:
                    raise websocket.WebSocketConnectionClosedException("not connected")
                opcode, data = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                self._safe(self.on_idle)
                continue
            except Exception as exc:  # closed, reset, refused: all mean "reconnect"
                if self._closing.is_set():
                    break
                log.debug("websocket %s dropped: %s", self.ws_url, exc)
                self._reconnect()
                continue
            if opcode == websocket.ABNF.OPCODE_TEXT:
                try:
                    message = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
                except ValueError:
                    log.warning("ignoring a text frame that is not JSON: %.100r", data)
                    continue
                if message.get("type") == "feature_flags":
                    self.server_flags = dict(message.get("data") or {})
                    continue
                self._safe(self.on_text, message)
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                self._safe(self.on_binary, data)
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                self._drop_ws()

    def _drop_ws(self) -> None:
        self.connected.clear()
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.shutdown()

    def _reconnect(self) -> None:
        self._drop_ws()
        delay = 0.2
        while not self._closing.is_set():
            wait = max(delay, self._paused_until - time.monotonic())
            # keep the heartbeat going while we are cut off: the owner decides when the server is dead
            self._safe(self.on_idle)
            if self._closing.wait(min(wait, 1.0)):
                return
            if time.monotonic() < self._paused_until:
                continue
            try:
                self._open()
            except Exception as exc:
                log.debug("reconnect to %s failed: %s", self.ws_url, exc)
                delay = min(delay * 2, 2.0)
                continue
            self.reconnects += 1
            self._safe(self.on_reconnect)
            return

    def _safe(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # the reader thread must survive a bug in a handler
            log.exception("websocket handler %r failed", fn)
