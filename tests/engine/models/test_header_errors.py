"""Damaged safetensors headers are answered with a ModelError that says to re-download, never a bare error."""

from __future__ import annotations

import json
import struct

import pytest

pytest.importorskip("torch")

from comfykit.engine.models.checkpoint import read_state_dict  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402


def _file(tmp_path, header: bytes, data: bytes = b"") -> str:
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return str(path)


@pytest.mark.parametrize("header", [
    b"[" * 100_000 + b"]" * 100_000,                                              # nested past the recursion limit
    json.dumps({"w": {"dtype": "F32", "shape": [1]}}).encode(),                   # no data_offsets
    json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": "0,4"}}).encode(),
    json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4]}}).encode(),
    json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}).encode(),
    json.dumps({"w": "not an entry"}).encode(),
    json.dumps([1, 2, 3]).encode(),                                               # not an object at all
])
def test_damaged_headers_are_model_errors(tmp_path, header):
    with pytest.raises(ModelError, match="re-download"):
        read_state_dict(_file(tmp_path, header, b"\0" * 8))


def test_a_good_header_still_loads(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    assert read_state_dict(_file(tmp_path, header, struct.pack("<f", 2.5)))["w"].item() == 2.5
