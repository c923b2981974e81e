"""Model loading for the embedded engine: SD1.x / SD2.x / SDXL checkpoints, VAEs, LoRAs, and a model manager.

>>> from comfykit.engine.models import load_checkpoint
>>> model, clip, vae = load_checkpoint("models/checkpoints/comfykit-demo-sd15.safetensors")
>>> cond, pooled = clip.encode("a photo of a cat")
"""

from .checkpoint import load_checkpoint, load_vae, read_state_dict
from .diffusion import VAE, DiffusionModel
from .lora import load_lora
from .manager import ModelManager
from .text_encoder import TextEncoder

__all__ = ["load_checkpoint", "load_vae", "load_lora", "read_state_dict", "ModelManager", "DiffusionModel", "TextEncoder", "VAE"]
