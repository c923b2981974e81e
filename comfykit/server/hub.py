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


def encode_preview(image: Any, max_size: int) -> bytes:
    """JPEG bytes of ``image`` fitted (up or down, as ComfyUI does) into ``max_size`` x ``max_size``."""
    from PIL import Image, ImageOps

    if image.mode != "RGB":
        image = image.convert("RGB")
    image = ImageOps.contain(image, (max_size, max_size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def legacy_frame(jpeg: bytes) -> bytes:
    """Binary frame type 1: ``>I 1`` + ``>I 1`` (JPEG) + the image bytes."""
    return struct.pack(">II", PREVIEW_IMAGE, _JPEG) + jpeg


def metadata_frame(jpeg: bytes, metadata: dict[str, Any]) -> bytes:
    """Binary frame type 4: ``>I 4`` + ``>I len(json)`` + the metadata JSON + the image bytes."""
    meta = json.dumps(metadata).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + jpeg


class _Client:
    def __init__(self, sid: str, ws: Any):
        self.sid = sid
        self.ws = ws
        self.flags: dict[str, Any] = {}
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.writer: asyncio.Task[None] | None = None

    @property
    def wants_metadata(self) -> bool:
        return bool(self.flags.get("supports_preview_metadata"))


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
            return
        # Messages from the worker are batched: one wake-up of the loop per burst rather than per message, which
        # matters because every wake-up has to win the GIL back from the running prompt.
        with self._lock:
            self._pending.append((fn, args))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop closed between the check and the call: the server is stopping
            pass

    def _flush(self) -> None:
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
            self._scheduled = False
        for fn, args in batch:
            fn(*args)

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
        client = _Client(sid, ws)
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
                if kind == "text":
                    await client.ws.send_str(payload)
                else:
                    await client.ws.send_bytes(payload)
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
        for client in list(self.clients.values()):
            if client.writer is not None:
                client.writer.cancel()
            await client.ws.close()
        self.clients.clear()
