"""/view and /upload/image: formats, name clashes, hashing, and every way out of the folders being refused."""

from __future__ import annotations

import io

import pytest
import requests
from PIL import Image


def _png(color=(10, 20, 30), size=(8, 8), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _upload(server, data: bytes, name: str, **fields) -> requests.Response:
    return requests.post(server.url + "/upload/image", files={"image": (name, data, "image/png")},
                         data=fields, timeout=30)


def test_upload_name_clash_gets_a_number_unless_the_bytes_match(server, server_root):
    first = _upload(server, _png((1, 2, 3)), "clash.png")
    assert first.json() == {"name": "clash.png", "subfolder": "", "type": "input"}
    same = _upload(server, _png((1, 2, 3)), "clash.png")  # identical bytes: the existing name, nothing written
    assert same.json()["name"] == "clash.png"
    other = _upload(server, _png((9, 9, 9)), "clash.png")
    assert other.json()["name"] == "clash (1).png"
    again = _upload(server, _png((9, 9, 9)), "clash.png")  # matches "clash (1).png" by hash
    assert again.json()["name"] == "clash (1).png"
    third = _upload(server, _png((7, 7, 7)), "clash.png")
    assert third.json()["name"] == "clash (2).png"
    assert sorted(p.name for p in (server_root / "input").glob("clash*")) == \
        ["clash (1).png", "clash (2).png", "clash.png"]
    over = _upload(server, _png((5, 5, 5)), "clash.png", overwrite="true")
    assert over.json()["name"] == "clash.png"
    assert Image.open(server_root / "input" / "clash.png").getpixel((0, 0)) == (5, 5, 5)


def test_upload_into_subfolder_and_other_types_then_view(server, server_root):
    answer = _upload(server, _png((4, 5, 6)), "sub.png", subfolder="a/b", type="temp").json()
    assert answer == {"name": "sub.png", "subfolder": "a/b", "type": "temp"}
    assert (server_root / "temp" / "a" / "b" / "sub.png").is_file()
    got = requests.get(server.url + "/view", params={"filename": "sub.png", "subfolder": "a/b", "type": "temp"},
                       timeout=30)
    assert got.status_code == 200 and got.headers["Content-Type"] == "image/png"
    assert got.headers["Content-Disposition"] == 'filename="sub.png"'
    annotated = requests.get(server.url + "/view", params={"filename": "dot.png [input]"}, timeout=30)
    assert annotated.status_code == 200 and Image.open(io.BytesIO(annotated.content)).size == (8, 8)


@pytest.mark.parametrize("fields", [{"subfolder": "../.."}, {"subfolder": "/etc"}, {"subfolder": "a/../../x"}])
def test_upload_refuses_paths_outside_the_folder(server, fields):
    answer = _upload(server, _png(), "evil.png", **fields)
    assert answer.status_code == 400


def test_upload_needs_a_file_and_a_known_type(server):
    assert requests.post(server.url + "/upload/image", data={"x": "1"}, timeout=30).status_code == 400
    assert _upload(server, _png(), "t.png", type="models").status_code == 400


@pytest.mark.parametrize("params,status", [
    ({"filename": "../conftest.py"}, 400),
    ({"filename": "/etc/passwd"}, 400),
    ({"filename": ""}, 400),
    ({"filename": "dot.png", "type": "bogus"}, 400),
    ({"filename": "dot.png", "type": "input", "subfolder": ".."}, 403),
    ({"filename": "passwd", "type": "input", "subfolder": "/etc"}, 403),
    ({"filename": "missing.png", "type": "input"}, 404),
])
def test_view_refuses_traversal_with_comfyui_status_codes(server, params, status):
    assert requests.get(server.url + "/view", params=params, timeout=30).status_code == status


def test_view_preview_and_channels(server, server_root):
    Image.new("RGBA", (6, 4), (200, 100, 50, 128)).save(server_root / "input" / "alpha.png")
    base = {"filename": "alpha.png", "type": "input"}
    jpeg = requests.get(server.url + "/view", params={**base, "preview": "jpeg;80", "channel": "rgb"}, timeout=30)
    assert jpeg.headers["Content-Type"] == "image/jpeg" and Image.open(io.BytesIO(jpeg.content)).format == "JPEG"
    webp = requests.get(server.url + "/view", params={**base, "preview": "webp;50"}, timeout=30)
    assert webp.headers["Content-Type"] == "image/webp"
    rgb = Image.open(io.BytesIO(requests.get(server.url + "/view", params={**base, "channel": "rgb"},
                                             timeout=30).content))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (200, 100, 50)
    alpha = Image.open(io.BytesIO(requests.get(server.url + "/view", params={**base, "channel": "a"},
                                               timeout=30).content))
    assert alpha.mode == "RGBA" and alpha.getpixel((0, 0)) == (0, 0, 0, 128)


def test_view_never_serves_active_content_as_such(server, server_root):
    (server_root / "output" / "page.html").write_text("<script>alert(1)</script>")
    answer = requests.get(server.url + "/view", params={"filename": "page.html"}, timeout=30)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/octet-stream"


def test_cross_origin_post_to_loopback_is_refused(server):
    evil = requests.post(server.url + "/prompt", json={}, headers={"Origin": "http://evil.example"}, timeout=30)
    assert evil.status_code == 403
    same = requests.post(server.url + "/prompt", json={}, headers={"Origin": server.url}, timeout=30)
    assert same.status_code == 400  # reached the handler: no prompt


def test_upload_limit_and_cors_option(engine):
    from comfykit.server import create_app
    from comfykit.server.runner import start_background

    app = create_app(engine, max_upload_size_mb=0.01, enable_cors="*")
    handle = start_background(engine, app, "127.0.0.1", 0)
    try:
        big = _upload(handle, b"\0" * 20000, "big.png")
        assert big.status_code == 413
        assert requests.get(handle.url + "/features", timeout=30).json()["max_upload_size"] == int(0.01 * 1024 * 1024)
        cross = requests.post(handle.url + "/prompt", json={}, headers={"Origin": "http://elsewhere.example"},
                              timeout=30)
        assert cross.status_code == 400 and cross.headers["Access-Control-Allow-Origin"] == "*"
        options = requests.options(handle.url + "/prompt", timeout=30)
        assert options.status_code == 200 and "POST" in options.headers["Access-Control-Allow-Methods"]
    finally:
        handle.stop()
