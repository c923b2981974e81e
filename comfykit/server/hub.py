"""WebSocket hub: ComfyUI's /ws protocol, addressing by client id, and binary preview frames."""

from __future__ import annotations

import asyncio
import collections
import io
import json
import logging
import struct
import threading
import uuid
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# protocol.BinaryEventTypes in ComfyUI
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
_JPEG = 1

#: A socket whose outbox grows past this is too slow and loses its previews...
_MAX_OUTBOX = 256
#: ...and past this it is not reading at all: it is dropped so that it cannot grow the server's memory forever.
_MAX_BACKLOG = 8192
#: Bytes a socket may have waiting in its transport before its writer stops taking more from the outbox.
_HIGH_WATER = 64 * 1024
#: WebSocket opcodes of the frames the hub writes itself.
_OP_TEXT, _OP_BINARY = 0x1, 0x2
#: Longest a message from the worker waits for the loop while messages are flowing (see Hub._call).
FLUSH_INTERVAL = 0.01


def encode_preview(image: Any, max_size: int) -> bytes:
    """JPEG bytes of ``image`` fitted (up or down, as ComfyUI does) into ``max_size`` x ``max_size``."""
    from PIL import Image, ImageOps

    if image.mode != "RGB":
        image = image.convert("RGB")
    image = ImageOps.contain(image, (max_size, max_size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, uncompressed, final WebSocket frame (RFC 6455 section 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def legacy_frame(jpeg: bytes) -> bytes:
    """Binary frame type 1: ``>I 1`` + ``>I 1`` (JPEG) + the image bytes."""
    return struct.pack(">II", PREVIEW_IMAGE, _JPEG) + jpeg


def metadata_frame(jpeg: bytes, metadata: dict[str, Any]) -> bytes:
    """Binary frame type 4: ``>I 4`` + ``>I len(json)`` + the metadata JSON + the image bytes."""
    meta = json.dumps(metadata).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + jpeg


class _Client:
    def __init__(self, sid: str, ws: Any, transport: Any = None):
        self.sid = sid
        self.ws = ws
        # Set when the socket has no compression: the writer then frames a whole burst itself and hands it to the
        # transport in one write (one send() and one wake-up of the reader) instead of one per message.
        self.transport = transport
        self.flags: dict[str, Any] = {}
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.writer: asyncio.Task[None] | None = None

    @property
    def wants_metadata(self) -> bool:
        return bool(self.flags.get("supports_preview_metadata"))


def _frame(kind: str, payload: Any) -> bytes:
    return ws_frame(_OP_TEXT, payload.encode()) if kind == "text" else ws_frame(_OP_BINARY, payload)


class Hub:
    """The sockets of one server; ``send``/``send_progress`` may be called from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server_flags: dict[str, Any],
                 queue_remaining: Callable[[], int], executing_for: Callable[[str], Any]):
        self.loop = loop
        self.server_flags = server_flags
        self._queue_remaining = queue_remaining
        self._executing_for = executing_for  # sid -> last executing node id (or a sentinel) of its prompt
        self.clients: dict[str, _Client] = {}
        self._lock = threading.Lock()
        self._pending: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = collections.deque()
        self._scheduled = False
        self._ticker: asyncio.TimerHandle | None = None  # armed while messages flow; see _call

    # -- thread-safe senders ------------------------------------------------------------------------------
    def send(self, type_: str, data: dict[str, Any], sid: str | None = None) -> None:
        """Send a JSON message to ``sid``, or to every socket when ``sid`` is None."""
        text = json.dumps({"type": type_, "data": data})
        self._call(self._deliver, [("text", text)], [("text", text)], sid)

    def send_progress(self, data: dict[str, Any], jpeg: bytes | None, metadata: dict[str, Any],
                      sid: str | None = None) -> None:
        """A progress message and its preview frame, each socket getting the frame format it asked for."""
        text = json.dumps({"type": "progress", "data": data})
        if jpeg is None:
            self._call(self._deliver, [("text", text)], [("text", text)], sid)
            return
        # ComfyUI sends the metadata frame before the progress JSON and the legacy frame after it.
        legacy = [("text", text), ("preview", legacy_frame(jpeg))]
        modern = [("preview", metadata_frame(jpeg, metadata)), ("text", text)]
        self._call(self._deliver, legacy, modern, sid)

    def has_listeners(self, sid: str | None) -> bool:
        return bool(self.clients) if sid is None else sid in self.clients

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        if self.loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._flush()  # whatever other threads sent earlier goes out first
            fn(*args)
            self._arm()
            return
        # Messages from the worker are batched. Every wake-up of the loop has to win the GIL back from the running
        # prompt (it made a trivial prompt twice as slow), so while messages flow the loop collects them on a
        # short timer instead of being woken for each burst; the worker wakes it at once at the end of a prompt
        # (flush_now). Only the timing changes: messages keep their order and leave within FLUSH_INTERVAL.
        with self._lock:
            self._pending.append((fn, args))
            if self._scheduled or self._ticker is not None:
                return
            self._scheduled = True
        self._wake()

    def flush_now(self) -> None:
        """Send what other threads queued without waiting for the timer (the worker, when a prompt ends)."""
        with self._lock:
            if self._scheduled or not self._pending:
                return
            self._scheduled = True
        self._wake()

    def _wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop closed between the check and the call: the server is stopping
            pass

    def _arm(self) -> None:
        """Loop thread: keep collecting other threads' messages on the timer for the next FLUSH_INTERVAL."""
        with self._lock:
            if self._ticker is None and not self.loop.is_closed():
                self._ticker = self.loop.call_later(FLUSH_INTERVAL, self._tick)

    def _tick(self) -> None:
        with self._lock:
            self._ticker = None  # if nothing came for a whole interval the timer stops: the next message wakes us
            idle = not self._pending
        if not idle:
            self._flush()  # re-arms the timer

    def _flush(self) -> None:
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
            self._scheduled = False
        for fn, args in batch:
            fn(*args)
        if batch:
            self._arm()

    def _deliver(self, legacy: list[tuple[str, Any]], modern: list[tuple[str, Any]], sid: str | None) -> None:
        targets = list(self.clients.values()) if sid is None else [c for c in [self.clients.get(sid)] if c]
        for client in targets:
            if client.outbox.qsize() > _MAX_BACKLOG:
                log.warning("websocket %s stopped reading; dropping it", client.sid)
                self._drop(client)
                continue
            frames = modern if client.wants_metadata else legacy
            for kind, payload in frames:
                if kind == "preview" and client.outbox.qsize() > _MAX_OUTBOX:
                    continue  # a slow reader loses previews, never results
                client.outbox.put_nowait((kind, payload))

    # -- the /ws handler ----------------------------------------------------------------------------------
    async def handle(self, request: Any) -> Any:
        """aiohttp handler of ``GET /ws?clientId=...``."""
        from aiohttp import WSMsgType, web

        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=1 << 20)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        old = self.clients.pop(sid, None)
        if old is not None and old.writer is not None:
            old.writer.cancel()
        # permessage-deflate (browsers ask for it) keeps aiohttp's own per-message writer
        client = _Client(sid, ws, None if ws.compress else request.transport)
        self.clients[sid] = client
        client.writer = asyncio.ensure_future(self._writer(client))
        try:
            hello = {"status": {"exec_info": {"queue_remaining": self._queue_remaining()}}, "sid": sid}
            client.outbox.put_nowait(("text", json.dumps({"type": "status", "data": hello})))
            node = self._executing_for(sid)
            if node is not None:
                client.outbox.put_nowait(("text", json.dumps({"type": "executing", "data": {"node": node}})))
            first = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                if first:
                    first = False
                    self._maybe_flags(client, msg.data)
        finally:
            if self.clients.get(sid) is client:
                del self.clients[sid]
            if client.writer is not None:
                client.writer.cancel()
        return ws

    def _maybe_flags(self, client: _Client, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("type") == "feature_flags" and isinstance(msg.get("data"), dict):
            client.flags = msg["data"]
            client.outbox.put_nowait(("text", json.dumps({"type": "feature_flags", "data": self.server_flags})))

    async def _writer(self, client: _Client) -> None:
        try:
            while True:
                kind, payload = await client.outbox.get()
                transport = client.transport
                if transport is None:
                    if kind == "text":
                        await client.ws.send_str(payload)
                    else:
                        await client.ws.send_bytes(payload)
                    continue
                # Everything delivered by the same flush is in the outbox by now: frame it all, write it once.
                frames = [_frame(kind, payload)]
                while not client.outbox.empty():
                    frames.append(_frame(*client.outbox.get_nowait()))
                if transport.is_closing() or client.ws.closed:
                    raise ConnectionResetError("the socket is closing")
                transport.write(b"".join(frames))
                # A reader that falls behind: stop taking from the outbox (whose length is what previews are
                # skipped and stuck sockets dropped by) until the kernel takes the data.
                while transport.get_write_buffer_size() > _HIGH_WATER and not transport.is_closing():
                    await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a client that went away mid-send harms nobody else
            log.debug("websocket %s dropped: %s", client.sid, exc)
            if self.clients.get(client.sid) is client:
                del self.clients[client.sid]
            await client.ws.close()

    def _drop(self, client: _Client) -> None:
        if self.clients.get(client.sid) is client:
            del self.clients[client.sid]
        if client.writer is not None:
            client.writer.cancel()
        asyncio.ensure_future(client.ws.close())

    async def close_all(self) -> None:
        with self._lock:
            ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
        for client in list(self.clients.values()):
            if client.writer is not None:
                client.writer.cancel()
            await client.ws.close()
        self.clients.clear()
