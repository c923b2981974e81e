"""The WebSocket hub on its own: frame layouts, per-socket formats, and a socket that never reads."""

from __future__ import annotations

import asyncio
import io
import json
import struct

from PIL import Image

from comfykit.server import hub as hub_module
from comfykit.server.hub import Hub, _Client, encode_preview, legacy_frame, metadata_frame


class _StuckSocket:
    """A socket whose sends never complete, like a client that stopped reading."""

    def __init__(self):
        self.closed = False

    async def send_str(self, text):
        await asyncio.Event().wait()

    send_bytes = send_str

    async def close(self):
        self.closed = True


def test_frame_layouts_and_preview_size():
    jpeg = encode_preview(Image.new("RGBA", (8, 4), (1, 2, 3, 4)), 64)
    assert Image.open(io.BytesIO(jpeg)).size == (64, 32)  # enlarged to fit, aspect kept
    assert legacy_frame(b"JPG") == struct.pack(">II", 1, 1) + b"JPG"
    frame = metadata_frame(b"JPG", {"node_id": "3"})
    kind, length = struct.unpack(">II", frame[:8])
    assert kind == 4 and json.loads(frame[8:8 + length]) == {"node_id": "3"} and frame[8 + length:] == b"JPG"


def test_a_socket_that_never_reads_is_dropped_not_buffered_forever(monkeypatch):
    monkeypatch.setattr(hub_module, "_MAX_BACKLOG", 50)

    async def scenario():
        hub = Hub(asyncio.get_running_loop(), {}, lambda: 0, lambda sid: None)
        stuck, fine = _Client("stuck", _StuckSocket()), _Client("fine", _StuckSocket())
        hub.clients = {"stuck": stuck, "fine": fine}
        stuck.writer = asyncio.ensure_future(hub._writer(stuck))
        for i in range(60):
            hub.send("status", {"i": i}, "stuck")
        hub.send("status", {"i": 0}, "fine")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return hub, stuck, fine

    hub, stuck, fine = asyncio.run(scenario())
    assert "stuck" not in hub.clients and stuck.ws.closed
    assert hub.clients == {"fine": fine} and fine.outbox.qsize() == 1


def test_previews_are_skipped_for_a_slow_reader_but_results_are_not():
    async def scenario():
        hub = Hub(asyncio.get_running_loop(), {}, lambda: 0, lambda sid: None)
        slow = _Client("slow", _StuckSocket())
        hub.clients = {"slow": slow}
        for _ in range(hub_module._MAX_OUTBOX + 10):
            hub.send_progress({"value": 1, "max": 2}, b"JPG", {}, None)
        return [kind for kind, _ in list(slow.outbox._queue)]

    kinds = asyncio.run(scenario())
    assert kinds.count("text") == hub_module._MAX_OUTBOX + 10  # every progress message is kept
    assert kinds.count("preview") < kinds.count("text")
