"""Small API prompts the client tests run (tiny demo checkpoint, 32x32, few steps)."""

from __future__ import annotations

import sys
from pathlib import Path

import tiny_graphs

STEPS = 2
SIZE = 32  # pixels: a 4x4 latent keeps every sampler step in the tens of milliseconds


def txt2img(ckpt: str, seed: int = 42, steps: int = STEPS, prefix: str = "client", size: int = SIZE) -> dict:
    """The API prompt of the ComfyUI capture's txt2img graph (SaveImage is node 9)."""
    return tiny_graphs.t2i(ckpt, negative="blurry", seed=seed, steps=steps, prefix=prefix, size=size)


def load_and_save(image: str, prefix: str = "upload") -> dict:
    """LoadImage -> SaveImage: needs no model, runs in milliseconds."""
    return {"1": {"class_type": "LoadImage", "inputs": {"image": image}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


def server_cmd(models: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "comfykit.server", "--cpu", "--models-dir", str(models),
            "--output-directory", str(root / "output"), "--input-directory", str(root / "input"),
            "--preview-method", "latent2rgb"]
