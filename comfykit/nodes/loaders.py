"""Loader nodes: CheckpointLoaderSimple, VAELoader, LoraLoader, LoraLoaderModelOnly.

Models go through the engine's ModelManager, so a file stays loaded between runs and across nodes.
"""

from __future__ import annotations

from typing import Any

from .base import FILES, FLOAT, LINK, Node


class CheckpointLoaderSimple(Node):
    """Loads a checkpoint: diffusion model, text encoder and VAE."""

    DISPLAY, CATEGORY = "Load Checkpoint", "loaders"
    INPUTS = {"ckpt_name": FILES("checkpoints", "Checkpoint file to load.")}
    OUTPUTS = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"

    def load_checkpoint(self, ckpt_name: str) -> tuple[Any, Any, Any]:
        path = self.engine.folders.get_full_path("checkpoints", ckpt_name)
        model, clip, vae = self.engine.models.load_checkpoint(
            path, embeddings_dir=self.engine.folders.folder("embeddings"))
        return (model, clip, vae)


class VAELoader(Node):
    """Loads a standalone VAE."""

    DISPLAY, CATEGORY = "Load VAE", "loaders"
    INPUTS = {"vae_name": FILES("vae", "VAE file to load.")}
    OUTPUTS = ("VAE",)
    FUNCTION = "load_vae"

    def load_vae(self, vae_name: str) -> tuple[Any]:
        path = self.engine.folders.get_full_path("vae", vae_name)
        return (self.engine.models.load_vae(path),)


def _apply_lora(engine: Any, model: Any, clip: Any, lora_name: str, strength_model: float,
                strength_clip: float) -> tuple[Any, Any]:
    if strength_model == 0 and strength_clip == 0:
        return (model, clip)
    from ..engine.models import load_lora

    path = engine.folders.get_full_path("loras", lora_name)
    return tuple(load_lora(model, clip, path, strength_model, strength_clip))


class LoraLoader(Node):
    """Applies a LoRA to the diffusion model and the text encoder."""

    DISPLAY, CATEGORY = "Load LoRA", "loaders"
    INPUTS = {"model": LINK("MODEL", "Diffusion model to patch."),
              "clip": LINK("CLIP", "Text encoder to patch."),
              "lora_name": FILES("loras", "LoRA file to apply."),
              "strength_model": FLOAT(1.0, -100.0, 100.0, 0.01, "LoRA strength on the diffusion model."),
              "strength_clip": FLOAT(1.0, -100.0, 100.0, 0.01, "LoRA strength on the text encoder.")}
    OUTPUTS = ("MODEL", "CLIP")
    FUNCTION = "load_lora"

    def load_lora(self, model: Any, clip: Any, lora_name: str, strength_model: float,
                  strength_clip: float) -> tuple[Any, Any]:
        return _apply_lora(self.engine, model, clip, lora_name, strength_model, strength_clip)


class LoraLoaderModelOnly(Node):
    """Applies a LoRA to the diffusion model only."""

    DISPLAY, CATEGORY = "LoraLoaderModelOnly", "loaders"
    INPUTS = {"model": LINK("MODEL", "Diffusion model to patch."),
              "lora_name": FILES("loras", "LoRA file to apply."),
              "strength_model": FLOAT(1.0, -100.0, 100.0, 0.01, "LoRA strength.")}
    OUTPUTS = ("MODEL",)
    FUNCTION = "load_lora_model_only"

    def load_lora_model_only(self, model: Any, lora_name: str, strength_model: float) -> tuple[Any]:
        return (_apply_lora(self.engine, model, None, lora_name, strength_model, 0)[0],)
