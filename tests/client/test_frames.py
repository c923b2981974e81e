"""Binary WebSocket frames: both preview formats and progress text decode to what ComfyUI put in them."""

from __future__ import annotations

import json
import struct

import pytest
from PIL import Image

from comfykit.client.frames import (
    PREVIEW_IMAGE,
    PREVIEW_IMAGE_WITH_METADATA,
    TEXT,
    FrameError,
    decode_frame,
    encode_preview,
)


def _image(color=(200, 30, 40), size=(16, 12)):
    return Image.new("RGB", size, color)


def test_legacy_jpeg_preview_decodes_to_pil():
    frame = decode_frame(encode_preview(_image()))
    assert frame.type == PREVIEW_IMAGE
    assert frame.mime == "image/jpeg"
    assert frame.image.size == (16, 12)
    r, g, b = frame.image.getpixel((8, 6))
    assert abs(r - 200) < 10 and abs(g - 30) < 10 and abs(b - 40) < 10
    assert frame.prompt_id is None  # legacy frames carry no ids: they follow their progress message


def test_legacy_png_preview_is_lossless():
    raw = struct.pack(">II", 1, 2)
    import io

    buf = io.BytesIO()
    _image((1, 2, 3)).save(buf, format="PNG")
    frame = decode_frame(raw + buf.getvalue())
    assert frame.mime == "image/png"
    assert frame.image.getpixel((0, 0)) == (1, 2, 3)


def test_metadata_preview_carries_prompt_and_node():
    meta = {"node_id": "3", "prompt_id": "p-1", "display_node_id": "3", "parent_node_id": None,
            "real_node_id": "3"}
    frame = decode_frame(encode_preview(_image(), metadata=meta))
    assert frame.type == PREVIEW_IMAGE_WITH_METADATA
    assert frame.prompt_id == "p-1" and frame.node_id == "3"
    assert frame.mime == "image/jpeg"
    assert frame.image.size == (16, 12)


def test_text_frame():
    node = b"7"
    frame = decode_frame(struct.pack(">II", TEXT, len(node)) + node + "héllo".encode())
    assert frame.type == TEXT and frame.node_id == "7" and frame.text == "héllo"


def test_unknown_type_is_returned_not_raised():
    assert decode_frame(struct.pack(">I", 99) + b"xx").type == 99


@pytest.mark.parametrize("payload", [b"", b"\x00\x00", struct.pack(">II", 4, 1000) + b"{}"])
def test_truncated_frames_raise_frame_error(payload):
    with pytest.raises(FrameError):
        decode_frame(payload)


def test_metadata_json_is_what_comfyui_sends():
    blob = json.dumps({"node_id": "9", "prompt_id": "x", "image_type": "image/png"}).encode()
    import io

    buf = io.BytesIO()
    _image().save(buf, format="PNG")
    frame = decode_frame(struct.pack(">II", 4, len(blob)) + blob + buf.getvalue())
    assert frame.mime == "image/png" and frame.metadata["node_id"] == "9"
