"""One real Engine and one real server (loopback, free port) shared by the server tests, plus WS helpers."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import tiny_graphs

pytest.importorskip("aiohttp")
pytest.importorskip("torch")
websocket = pytest.importorskip("websocket")
requests = pytest.importorskip("requests")

PREVIEW_SIZE = 96


@pytest.fixture(scope="session")
def server_root(tmp_path_factory, models_dir) -> Path:
    """models/ (the demo checkpoint, under its own name and the reference's, plus a broken file), input/, ..."""
    from PIL import Image

    root = tmp_path_factory.mktemp("server")
    ckpts = root / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    demo = sorted((models_dir / "checkpoints").rglob("*.safetensors"))[0]
    os.symlink(demo, ckpts / demo.name)
    if demo.name != "tiny-sd15.safetensors":  # the name the reference captures use
        os.symlink(demo, ckpts / "tiny-sd15.safetensors")
    (ckpts / "broken.safetensors").write_bytes(b"\xff" * 64)  # a header length no file can have
    (root / "input").mkdir()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(root / "input" / "dot.png")
    return root


@pytest.fixture(scope="session")
def engine(server_root):
    from comfykit.engine import Engine

    eng = Engine(server_root / "models", output_dir=server_root / "output", input_dir=server_root / "input",
                 temp_dir=server_root / "temp", device="cpu", previews="latent2rgb")
    yield eng


@pytest.fixture(scope="session")
def server(engine):
    from comfykit.server import serve

    handle = serve(engine, port=0, preview_size=PREVIEW_SIZE)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def demo_ckpt(server_root, models_dir) -> str:
    """The demo checkpoint's name in the server's checkpoints folder."""
    return sorted((models_dir / "checkpoints").rglob("*.safetensors"))[0].name


def t2i(ckpt: str, text: str = "a photo of a cat", *, seed: int = 42, steps: int = 2, size: int = 32,
        prefix: str = "tiny_t2i") -> dict[str, Any]:
    """The reference captures' text-to-image prompt (node ids 3-9)."""
    return tiny_graphs.t2i(ckpt, text=text, seed=seed, steps=steps, size=size, prefix=prefix)


def scale(width: int, height: int = 8, *, save: bool = False) -> dict[str, Any]:
    """A model-free prompt: LoadImage -> ImageScale -> PreviewImage (or SaveImage)."""
    out = ({"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "scaled"}} if save
           else {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}})
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "dot.png"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                     "width": width, "height": height, "crop": "disabled"}},
        "3": out,
    }


class WS:
    """A websocket-client connection that records text messages and binary frames in arrival order."""

    def __init__(self, base_url: str, client_id: str | None = None, *, metadata: bool = False):
        self.client_id = client_id or uuid.uuid4().hex
        url = base_url.replace("http://", "ws://") + f"/ws?clientId={self.client_id}"
        self.sock = websocket.create_connection(url, timeout=60)
        self.frames: list[tuple[str, Any]] = []
        self.hello = json.loads(self.sock.recv())
        if metadata:
            self.sock.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
            self.flags = self.next_text()

    def recv(self) -> tuple[str, Any]:
        raw = self.sock.recv()
        frame = ("binary", raw) if isinstance(raw, bytes) else ("text", json.loads(raw))
        self.frames.append(frame)
        return frame

    def next_text(self) -> dict[str, Any]:
        while True:
            kind, payload = self.recv()
            if kind == "text":
                return payload

    def until(self, done, timeout: float = 120.0) -> list[tuple[str, Any]]:
        """Receive until ``done(frame)`` is true; returns the frames received by this call."""
        start, got = time.monotonic(), []
        while time.monotonic() - start < timeout:
            frame = self.recv()
            got.append(frame)
            if done(frame):
                return got
        raise TimeoutError(f"gave up after {timeout}s; got {[f[1].get('type') for f in got if f[0] == 'text']}")

    def until_done(self, prompt_id: str, timeout: float = 120.0) -> list[tuple[str, Any]]:
        """Frames until ``executing {node: null}`` of ``prompt_id``."""
        return self.until(lambda f: f[0] == "text" and f[1]["type"] == "executing"
                          and f[1]["data"].get("node") is None and f[1]["data"].get("prompt_id") == prompt_id,
                          timeout)

    def close(self) -> None:
        self.sock.close()


def texts(frames: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [payload for kind, payload in frames if kind == "text"]


def post(server, prompt: dict[str, Any], **body: Any) -> requests.Response:
    return requests.post(server.url + "/prompt", json={"prompt": prompt, **body}, timeout=60)


def wait_history(server, prompt_id: str, timeout: float = 120.0) -> dict[str, Any]:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        item = requests.get(f"{server.url}/history/{prompt_id}", timeout=30).json()
        if item:
            return item[prompt_id]
        time.sleep(0.05)
    raise TimeoutError(f"prompt {prompt_id} never reached the history")
