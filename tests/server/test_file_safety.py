"""Uploads and /view stay inside their folders (names, symlinks), never serve active content, bound previews."""

from __future__ import annotations

import io
import os
import struct
import zlib

import pytest
import requests
from PIL import Image

from comfykit.server.files import MAX_DECODE_PIXELS


def _png(color=(10, 20, 30), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _raw_upload(server, name: bytes, data: bytes, **fields: str) -> requests.Response:
    """A multipart upload with the filename bytes exactly as given (requests would escape NUL and quotes)."""
    boundary = b"----comfykit-test-boundary"
    parts = [b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="' + name +
             b'"\r\nContent-Type: image/png\r\n\r\n' + data + b"\r\n"]
    for key, value in fields.items():
        parts.append(b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + key.encode() +
                     b'"\r\n\r\n' + value.encode() + b"\r\n")
    body = b"".join(parts) + b"--" + boundary + b"--\r\n"
    return requests.post(server.url + "/upload/image", data=body, timeout=30,
                         headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode()})


def _snapshot(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names}


@pytest.mark.parametrize("name", [b".", b"./", b"x/..", b"a/b/../..", b"..", b"", b"bad\0name.png",
                                  b"x.png\"; filename*=UTF-8''bad%00name.png; x=\"y",
                                  b"n" * 300 + b".png"])
def test_upload_refuses_names_that_are_not_a_file_in_the_folder(server, server_root, name):
    before = _snapshot(server_root)
    answer = _raw_upload(server, name, _png())
    assert answer.status_code == 400, answer.text
    assert "error" in answer.json()
    assert _snapshot(server_root) == before  # nothing written anywhere, the folder's parent included


def test_upload_of_a_plain_name_still_works_raw(server, server_root):
    answer = _raw_upload(server, b"raw-ok.png", _png((3, 3, 3)))
    assert answer.json() == {"name": "raw-ok.png", "subfolder": "", "type": "input"}
    assert (server_root / "input" / "raw-ok.png").is_file()


@pytest.fixture()
def outside(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    return secret


def test_view_does_not_follow_a_symlink_out_of_the_folder(server, server_root, outside):
    (server_root / "output").mkdir(exist_ok=True)
    link = server_root / "output" / "leak.png"
    link.symlink_to(outside)
    linked_dir = server_root / "output" / "leakdir"
    linked_dir.symlink_to(outside.parent, target_is_directory=True)
    try:
        for params in ({"filename": "leak.png"}, {"filename": "secret.txt", "subfolder": "leakdir"},
                       {"filename": "leak.png", "preview": "webp;50"}):
            answer = requests.get(server.url + "/view", params=params, timeout=30)
            assert answer.status_code == 403, params
            assert b"top secret" not in answer.content
    finally:
        link.unlink()
        linked_dir.unlink()


def test_view_follows_a_symlink_that_stays_inside(server, server_root):
    inner = server_root / "input" / "inner-link.png"
    inner.symlink_to(server_root / "input" / "dot.png")
    try:
        answer = requests.get(server.url + "/view", params={"filename": "inner-link.png", "type": "input"},
                              timeout=30)
        assert answer.status_code == 200 and Image.open(io.BytesIO(answer.content)).size == (8, 8)
    finally:
        inner.unlink()


def test_upload_does_not_write_through_a_symlink_out_of_the_folder(server, server_root, outside):
    link = server_root / "input" / "trap.png"
    link.symlink_to(outside)
    linked_dir = server_root / "input" / "trapdir"
    linked_dir.symlink_to(outside.parent, target_is_directory=True)
    try:
        over = requests.post(server.url + "/upload/image", files={"image": ("trap.png", _png(), "image/png")},
                             data={"overwrite": "true"}, timeout=30)
        assert over.status_code == 400
        into = requests.post(server.url + "/upload/image", files={"image": ("new.png", _png(), "image/png")},
                             data={"subfolder": "trapdir"}, timeout=30)
        assert into.status_code == 400
        assert outside.read_text() == "top secret"
        assert sorted(p.name for p in outside.parent.iterdir()) == ["secret.txt"]
    finally:
        link.unlink()
        linked_dir.unlink()


def test_active_content_is_an_attachment_with_nosniff(server, server_root):
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    for name in ("evil.svg", "evil.xhtml", "evil.xml", "evil.html"):
        up = requests.post(server.url + "/upload/image", files={"image": (name, svg, "image/svg+xml")},
                           data={"overwrite": "true"}, timeout=30)
        assert up.status_code == 200
        got = requests.get(server.url + "/view", params={"filename": name, "type": "input"}, timeout=30)
        assert got.status_code == 200
        assert got.headers["Content-Type"] == "application/octet-stream"
        assert got.headers["Content-Disposition"].startswith("attachment;")
        assert got.headers["X-Content-Type-Options"] == "nosniff"
    png = requests.get(server.url + "/view", params={"filename": "dot.png", "type": "input"}, timeout=30)
    assert png.headers["Content-Type"] == "image/png"
    assert png.headers["Content-Disposition"] == 'filename="dot.png"'  # raster images stay inline


@pytest.mark.parametrize("method,path", [("GET", "/view?filename=dot.png&type=input"), ("GET", "/object_info"),
                                         ("POST", "/prompt"), ("GET", "/no/such/route"), ("GET", "/")])
def test_every_response_carries_nosniff_and_a_csp(server, method, path):
    answer = requests.request(method, server.url + path, json={} if method == "POST" else None, timeout=30)
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    csp = answer.headers["Content-Security-Policy"]
    assert "default-src" in csp and "'unsafe-eval'" not in csp
    if path != "/":
        assert "default-src 'none'" in csp and "sandbox" in csp


def test_websocket_handshake_carries_the_headers(server):
    import websocket

    sock = websocket.create_connection(server.url.replace("http://", "ws://") + "/ws", timeout=30)
    try:
        headers = {k.lower(): v for k, v in sock.getheaders().items()}
        assert headers["x-content-type-options"] == "nosniff"
    finally:
        sock.close()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_preview_refuses_too_many_pixels_before_decoding(server, server_root):
    side = int(MAX_DECODE_PIXELS ** 0.5) + 1000
    (server_root / "input" / "bomb.png").write_bytes(_png_header_only(side, side))
    for params in ({"preview": "webp;90"}, {"channel": "a"}):
        answer = requests.get(server.url + "/view", params={"filename": "bomb.png", "type": "input", **params},
                              timeout=60)
        assert answer.status_code == 400
        assert f"{side}x{side}" in answer.json()["error"]


@pytest.mark.parametrize("params", [{"filename": "dot.png", "preview": "webp;999999"},
                                    {"filename": "dot.png", "preview": "jpeg;0"},
                                    {"filename": "notes.txt", "preview": "webp;90"},
                                    {"filename": "notes.txt", "channel": "rgb"}])
def test_bad_preview_requests_are_400_not_500(server, server_root, params):
    (server_root / "input" / "notes.txt").write_text("not an image")
    answer = requests.get(server.url + "/view", params={"type": "input", **params}, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"]


@pytest.mark.parametrize("filename", ["dot\0.png", "dot.png [input]\0"])
def test_view_refuses_nul_in_names(server, filename):
    answer = requests.get(server.url + "/view", params={"filename": filename, "type": "input"}, timeout=30)
    assert answer.status_code == 400
