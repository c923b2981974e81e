"""Loader nodes: checkpoints, diffusion models, text encoders (CLIP, T5), VAEs and LoRAs.

Models go through the engine's ModelManager, so a file stays loaded between runs and across nodes.
"""

from __future__ import annotations

from typing import Any

from .base import COMBO, FILES, FLOAT, LINK, Node

#: UNETLoader's weight_dtype choices: how the diffusion model's weights are stored on the device
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
#: The text-encoder types the engine builds (a subset of ComfyUI's lists, in ComfyUI's order)
CLIP_TYPES = ("stable_diffusion", "sd3")
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux")
_DEVICE = COMBO(("default", "cpu"), advanced=True)


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


class UNETLoader(Node):
    """Loads a diffusion model on its own (FLUX.1, SD3.5, SD1/SDXL UNets), from models/diffusion_models."""

    DISPLAY, CATEGORY = "Load Diffusion Model", "advanced/loaders"
    INPUTS = {"unet_name": FILES("diffusion_models", "Diffusion model file to load."),
              "weight_dtype": COMBO(WEIGHT_DTYPES, "How the weights are stored on the device (fp8 halves memory).")}
    OUTPUTS = ("MODEL",)
    FUNCTION = "load_unet"

    def load_unet(self, unet_name: str, weight_dtype: str) -> tuple[Any]:
        path = self.engine.folders.get_full_path("diffusion_models", unet_name)
        return (self.engine.models.load_diffusion_model(path, weight_dtype),)


def _load_text_encoders(engine: Any, names: list[str], type_: str, device: str) -> Any:
    paths = [engine.folders.get_full_path("text_encoders", name) for name in names]
    return engine.models.load_text_encoders(paths, type_, cpu=device == "cpu",
                                            embeddings_dir=engine.folders.folder("embeddings"))


class CLIPLoader(Node):
    """Loads one text encoder file: clip-l (SD1), clip-h (SD2), clip-g (SDXL refiner), or one of SD3's three."""

    DISPLAY, CATEGORY = "Load CLIP", "advanced/loaders"
    INPUTS = {"clip_name": FILES("text_encoders", "Text encoder file to load."),
              "type": COMBO(CLIP_TYPES, "The model family the text encoder is for.")}
    OPTIONAL = {"device": _DEVICE}
    OUTPUTS = ("CLIP",)
    FUNCTION = "load_clip"

    def load_clip(self, clip_name: str, type: str, device: str = "default") -> tuple[Any]:  # noqa: A002
        return (_load_text_encoders(self.engine, [clip_name], type, device),)


class DualCLIPLoader(Node):
    """Loads two text encoder files: clip-l + clip-g (SDXL), clip-l + t5xxl (FLUX.1), any two of SD3's three."""

    DISPLAY, CATEGORY = "DualCLIPLoader", "advanced/loaders"
    INPUTS = {"clip_name1": FILES("text_encoders", "First text encoder file."),
              "clip_name2": FILES("text_encoders", "Second text encoder file."),
              "type": COMBO(DUAL_CLIP_TYPES, "The model family the text encoders are for.")}
    OPTIONAL = {"device": _DEVICE}
    OUTPUTS = ("CLIP",)
    FUNCTION = "load_clip"

    def load_clip(self, clip_name1: str, clip_name2: str, type: str, device: str = "default") -> tuple[Any]:  # noqa: A002
        return (_load_text_encoders(self.engine, [clip_name1, clip_name2], type, device),)


class TripleCLIPLoader(Node):
    """Loads SD3/SD3.5's three text encoders: clip-l, clip-g and t5xxl."""

    DISPLAY, CATEGORY = None, "advanced/loaders"
    INPUTS = {"clip_name1": FILES("text_encoders", "clip_l file."),
              "clip_name2": FILES("text_encoders", "clip_g file."),
              "clip_name3": FILES("text_encoders", "t5xxl file.")}
    OUTPUTS = ("CLIP",)
    FUNCTION = "load_clip"

    def load_clip(self, clip_name1: str, clip_name2: str, clip_name3: str) -> tuple[Any]:
        return (_load_text_encoders(self.engine, [clip_name1, clip_name2, clip_name3], "sd3", "default"),)


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
