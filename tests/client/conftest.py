"""Servers for the client tests: comfykit's own ComfyUI-compatible server, launched through ComfyServer.launch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from client_workflows import server_cmd

#: main.py of a fake ComfyUI checkout: it runs comfykit's server with exactly the argv ComfyUI's main.py gets.
FAKE_MAIN = """\
import json, runpy, sys
with open("argv.json", "w") as fh:
    json.dump(sys.argv[1:], fh)
sys.argv = ["comfykit.server"] + sys.argv[1:]
runpy.run_module("comfykit.server", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="session")
def client_models(request, tmp_path_factory) -> Path:
    """A models folder with the tiny demo checkpoint and a broken one (for execution errors)."""
    pytest.importorskip("torch")
    pytest.importorskip("comfykit.demo")
    base = request.getfixturevalue("models_dir")
    folder = tmp_path_factory.mktemp("client-models")
    (folder / "checkpoints").mkdir()
    for ckpt in (base / "checkpoints").iterdir():
        os.symlink(ckpt, folder / "checkpoints" / ckpt.name)
    # a header length far past the end of the file: safetensors refuses it, as in the ComfyUI capture
    (folder / "checkpoints" / "broken.safetensors").write_bytes(b"\xff" * 64)
    return folder


@pytest.fixture(scope="session")
def ckpt_name(client_models) -> str:
    from comfykit import demo

    return demo.DEMO_CHECKPOINT


@pytest.fixture(scope="session")
def server(client_models, tmp_path_factory):
    """comfykit's server launched with a command line of our own (``--port`` appended by launch)."""
    from comfykit.client import ComfyServer

    root = tmp_path_factory.mktemp("srv")
    srv = ComfyServer.launch(cmd=server_cmd(client_models, root), timeout=90, log_file=root / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def checkout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ComfyUI")
    (root / "main.py").write_text(FAKE_MAIN)
    return root


@pytest.fixture(scope="session")
def main_py_server(client_models, checkout):
    """comfykit's server started the way a ComfyUI checkout is: ``python main.py --listen ... --port ...``."""
    from comfykit.client import ComfyServer

    srv = ComfyServer.launch(checkout, args=["--cpu", "--models-dir", str(client_models),
                                             "--preview-method", "latent2rgb"], timeout=90)
    yield srv
    srv.stop()
