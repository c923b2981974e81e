"""API prompts shared by the engine, server and client tests (run on the tiny demo checkpoint)."""

from __future__ import annotations

from typing import Any


def t2i(ckpt: str, *, text: str = "a photo of a cat", negative: str = "blurry, low quality", seed: int = 42,
        steps: int = 2, sampler: str = "euler", scheduler: str = "normal", size: int = 64,
        prefix: str = "tiny_t2i", save: bool = True) -> dict[str, Any]:
    """ComfyUI's default text-to-image graph with the node ids of its API example (3 KSampler ... 9 SaveImage)."""
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": sampler,
                                                   "scheduler": scheduler, "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": ({"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}} if save else
              {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}),
    }
