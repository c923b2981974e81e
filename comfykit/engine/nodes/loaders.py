"""Loader nodes: CheckpointLoaderSimple, VAELoader, LoraLoader, LoraLoaderModelOnly.

Models go through the engine's ModelManager, so a checkpoint stays loaded between runs and across nodes.
"""

from __future__ import annotations

from typing import Any

from .base import Node


class CheckpointLoaderSimple(Node):
    """Diffusion model, text encoder and VAE from one checkpoint file."""

    FUNCTION = "load_checkpoint"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")

    def load_checkpoint(self, ckpt_name: str) -> tuple[Any, Any, Any]:
        path = self.engine.folders.get_full_path("checkpoints", ckpt_name)
        model, clip, vae = self.engine.models.load_checkpoint(
            path, embeddings_dir=self.engine.folders.folder("embeddings"))
        return (model, clip, vae)


class VAELoader(Node):
    """A standalone VAE file."""

    FUNCTION = "load_vae"
    RETURN_TYPES = ("VAE",)

    def load_vae(self, vae_name: str) -> tuple[Any]:
        path = self.engine.folders.get_full_path("vae", vae_name)
        return (self.engine.models.load_vae(path),)


class LoraLoader(Node):
    """Patch a model and its text encoder with a LoRA (both strengths 0: unchanged)."""

    FUNCTION = "load_lora"
    RETURN_TYPES = ("MODEL", "CLIP")

    def load_lora(self, model: Any, clip: Any, lora_name: str, strength_model: float,
                  strength_clip: float) -> tuple[Any, Any]:
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        from ..models import load_lora

        path = self.engine.folders.get_full_path("loras", lora_name)
        return tuple(load_lora(model, clip, path, strength_model, strength_clip))


class LoraLoaderModelOnly(LoraLoader):
    """Patch only the diffusion model with a LoRA."""

    FUNCTION = "load_lora_model_only"
    RETURN_TYPES = ("MODEL",)

    def load_lora_model_only(self, model: Any, lora_name: str, strength_model: float) -> tuple[Any]:
        return (self.load_lora(model, None, lora_name, strength_model, 0)[0],)
