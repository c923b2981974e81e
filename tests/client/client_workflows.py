"""Small API prompts the client tests run (tiny demo checkpoint, 32x32, few steps)."""

from __future__ import annotations

import sys
from pathlib import Path

STEPS = 2
SIZE = 32  # pixels: a 4x4 latent keeps every sampler step in the tens of milliseconds


def txt2img(ckpt: str, seed: int = 42, steps: int = STEPS, prefix: str = "client", size: int = SIZE) -> dict:
    """The API prompt of the ComfyUI capture's txt2img graph (SaveImage is node 9)."""
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }


def load_and_save(image: str, prefix: str = "upload") -> dict:
    """LoadImage -> SaveImage: needs no model, runs in milliseconds."""
    return {"1": {"class_type": "LoadImage", "inputs": {"image": image}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


def server_cmd(models: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "comfykit.server", "--cpu", "--models-dir", str(models),
            "--output-directory", str(root / "output"), "--input-directory", str(root / "input"),
            "--preview-method", "latent2rgb"]
