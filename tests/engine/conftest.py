"""Engine fixtures: one Engine over the session's tiny demo checkpoint, shared by a test module."""

from __future__ import annotations

import pytest

from comfykit import demo


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    from comfykit.engine import Engine

    base = tmp_path_factory.mktemp("engine")
    eng = Engine(models_dir, output_dir=base / "output", input_dir=base / "input", temp_dir=base / "temp",
                 device="cpu", previews="latent2rgb")
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def ckpt_name(models_dir):
    return demo.ensure_demo_checkpoint(models_dir)


@pytest.fixture(scope="session")
def t2i_graph():
    """The t2i graph builder below, as a fixture (tests here are not a package)."""
    return t2i


def t2i(ckpt, *, steps=2, seed=42, text="a photo of a cat", sampler="euler", scheduler="normal", size=64,
        prefix="tiny_t2i", save=True):
    """ComfyUI's default text-to-image graph (node ids 3-9) at a tiny size."""
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": sampler,
                                                   "scheduler": scheduler, "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": ({"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}} if save else
              {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}),
    }
