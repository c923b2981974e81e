"""Fixtures shared by every test: the reference data in ../shared and tiny local models made on the fly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "comfyui-0.3.64"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """ComfyUI 0.3.64 captures beside the checkout; tests that need them skip in a user's clone."""
    if not REFERENCE.is_dir():
        pytest.skip("../shared/reference/comfyui-0.3.64 is not present")
    return REFERENCE


@pytest.fixture(scope="session")
def reference_object_info(reference_dir) -> dict:
    return json.loads((reference_dir / "object_info.json").read_text())


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A ComfyUI-style models folder holding the tiny random-weight demo checkpoint (made once per session)."""
    pytest.importorskip("torch")
    from comfykit import demo

    folder = tmp_path_factory.mktemp("models")
    demo.ensure_demo_checkpoint(folder)
    return folder
