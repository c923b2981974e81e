"""Decoding of ComfyUI's binary WebSocket frames (step previews and progress text).

Every binary frame starts with a big-endian ``uint32`` event type (``protocol.BinaryEventTypes``):

* ``1`` PREVIEW_IMAGE (legacy): ``>I image_type`` (1 = JPEG, 2 = PNG) then the image bytes. It carries no
  prompt or node id; it belongs to the ``progress`` message that came just before it.
* ``3`` TEXT: ``>I len(node_id)``, the node id, then UTF-8 text.
* ``4`` PREVIEW_IMAGE_WITH_METADATA: ``>I len(json)``, a JSON object (``node_id``, ``prompt_id``,
  ``display_node_id``, ``parent_node_id``, ``real_node_id``, ``image_type``), then the image bytes. It comes just
  before the ``progress`` message of the same step and is only sent to clients that announced
  ``supports_preview_metadata``.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from typing import Any

PREVIEW_IMAGE = 1
UNENCODED_PREVIEW_IMAGE = 2  # internal to ComfyUI, never on the wire
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4

_LEGACY_IMAGE_TYPES = {1: "image/jpeg", 2: "image/png"}


class FrameError(ValueError):
    """A binary frame too short or malformed to decode."""


@dataclass
class BinaryFrame:
    """One decoded binary frame; ``image`` is a loaded PIL image for preview frames."""

    type: int
    image: Any = None
    mime: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    node_id: str | None = None
    text: str | None = None

    @property
    def prompt_id(self) -> str | None:
        return self.metadata.get("prompt_id")


def _open_image(data: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()  # decode now: the bytes object goes away with the frame
    return image


def _u32(data: bytes, offset: int) -> int:
    if len(data) < offset + 4:
        raise FrameError(f"binary frame of {len(data)} bytes is too short for a header at byte {offset}")
    return struct.unpack_from(">I", data, offset)[0]


def decode_frame(data: bytes) -> BinaryFrame:
    """Decode one binary WebSocket message; unknown event types come back with only ``type`` set."""
    kind = _u32(data, 0)
    if kind == PREVIEW_IMAGE:
        image_type = _u32(data, 4)
        return BinaryFrame(kind, image=_open_image(data[8:]), mime=_LEGACY_IMAGE_TYPES.get(image_type))
    if kind == PREVIEW_IMAGE_WITH_METADATA:
        size = _u32(data, 4)
        if len(data) < 8 + size:
            raise FrameError(f"preview frame announces {size} bytes of metadata but holds {len(data) - 8}")
        metadata = json.loads(data[8:8 + size].decode("utf-8"))
        return BinaryFrame(kind, image=_open_image(data[8 + size:]), mime=metadata.get("image_type"),
                           metadata=metadata, node_id=metadata.get("node_id"))
    if kind == TEXT:
        size = _u32(data, 4)
        node_id = data[8:8 + size].decode("utf-8")
        return BinaryFrame(kind, node_id=node_id, text=data[8 + size:].decode("utf-8", errors="replace"))
    return BinaryFrame(kind)


def encode_preview(image: Any, *, metadata: dict[str, Any] | None = None, fmt: str = "JPEG") -> bytes:
    """Build a preview frame the way ComfyUI sends it: type 4 with ``metadata``, else legacy type 1."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=95, compress_level=1)
    payload = buf.getvalue()
    if metadata is None:
        return struct.pack(">II", PREVIEW_IMAGE, 1 if fmt.upper() == "JPEG" else 2) + payload
    meta = dict(metadata)
    meta.setdefault("image_type", "image/jpeg" if fmt.upper() == "JPEG" else "image/png")
    blob = json.dumps(meta).encode("utf-8")
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(blob)) + blob + payload
