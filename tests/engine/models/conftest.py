"""Tiny demo checkpoints of each family, written once per session."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ckpts")


@pytest.fixture(scope="session")
def make_ckpt(ckpt_dir):
    """arch -> path of a tiny checkpoint (seed 0), written on first use."""
    from comfykit import demo

    def make(arch: str):
        path = ckpt_dir / f"{arch}.safetensors"
        if not path.exists():
            demo.make_checkpoint(path, arch=arch)
        return path

    return make


@pytest.fixture(scope="session")
def sd1(make_ckpt):
    from comfykit.engine.models import load_checkpoint

    return load_checkpoint(make_ckpt("sd1"))


@pytest.fixture(scope="session")
def sdxl(make_ckpt):
    from comfykit.engine.models import load_checkpoint

    return load_checkpoint(make_ckpt("sdxl"))
