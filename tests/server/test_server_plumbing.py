"""The server validates a posted prompt once, reads folders from cache, builds previews only for sockets."""

from __future__ import annotations

import os
import sys
import time
import uuid

import pytest
from conftest import WS, post, scale, t2i, wait_history

import comfykit.graph.validate as validate_module


@pytest.fixture
def validations(monkeypatch):
    calls = []
    original = validate_module.validate_prompt

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    for name, module in list(sys.modules.items()):
        if name.startswith("comfykit") and getattr(module, "validate_prompt", None) is original:
            monkeypatch.setattr(module, "validate_prompt", counted)
    return calls


def test_a_posted_prompt_is_validated_once_and_folders_are_not_walked(server, engine, server_root, validations):
    old = time.time() - 3600  # folders written long ago: their cached listings can be trusted
    for path in (server_root / "models", server_root / "models" / "checkpoints", server_root / "input"):
        os.utime(path, (old, old))
    for width in (33, 34):
        validations.clear()
        scans = engine.folders.scans
        answer = post(server, scale(width))
        assert answer.status_code == 200, answer.text
        assert wait_history(server, answer.json()["prompt_id"])["status"]["completed"]
        assert len(validations) == 1  # at POST; the worker runs what was validated
    assert engine.folders.scans == scans  # the second prompt read no directory


def test_previews_are_made_only_when_a_socket_listens(server, engine, demo_ckpt, monkeypatch):
    from comfykit.engine.sampling.preview import Previewer

    made = []
    real = Previewer.snapshot
    monkeypatch.setattr(Previewer, "snapshot", lambda self, x0: made.append(1) or real(self, x0))
    nobody = post(server, t2i(demo_ckpt, "nobody listens", seed=21), client_id=uuid.uuid4().hex)
    wait_history(server, nobody.json()["prompt_id"])
    assert made == []

    ws = WS(server.url)
    pid = post(server, t2i(demo_ckpt, "someone listens", seed=22), client_id=ws.client_id).json()["prompt_id"]
    frames = ws.until_done(pid)
    ws.close()
    assert len(made) == 2 and [kind for kind, _ in frames].count("binary") == 2


def test_serve_refuses_an_object_that_is_not_an_engine():
    from comfykit.server import serve

    with pytest.raises(TypeError, match="lacks validate, execute, .*folders"):
        serve(object(), port=0)
