"""Attaching to a server behind ck.share's auth: credentials and tokens travel in the URL, as users paste it."""

from __future__ import annotations

import pytest
from client_workflows import load_and_save
from PIL import Image

import comfykit as ck
from comfykit.client import ComfyServer


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("aiohttp")
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("served")
    handle = ck.serve(port=0, models_dir=root / "models", output_dir=root / "output", input_dir=root / "input")
    yield handle
    handle.stop()


def test_token_link_works_and_a_bare_url_is_refused(served):
    from comfykit.share import TokenAuth

    served.set_auth(TokenAuth("s3cret"))
    try:
        with pytest.raises(ck.ServerError, match="needs credentials"):
            ComfyServer.connect(served.url, timeout=5)
        client = ComfyServer.connect(f"{served.url}/?token=s3cret")
        try:
            name = client.upload_image(Image.new("RGB", (8, 8), (4, 5, 6)), name="tok.png", overwrite=True)
            result = client.run(load_and_save(name, "token"), timeout=30)  # the WebSocket passed the check too
            assert result.image.getpixel((0, 0)) == (4, 5, 6)
            assert [e.type for e in result.events][-1] == "execution_success"
        finally:
            client.close()
    finally:
        served.set_auth(None)


def test_basic_credentials_in_the_url(served):
    from comfykit.share import BasicAuth

    served.set_auth(BasicAuth("comfy", "p@ss"))
    try:
        host = served.url.split("://", 1)[1]
        client = ComfyServer.connect(f"http://comfy:p%40ss@{host}")
        try:
            assert "LoadImage" in client.object_info()
        finally:
            client.close()
    finally:
        served.set_auth(None)
