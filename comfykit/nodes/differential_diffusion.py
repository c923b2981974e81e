"""DifferentialDiffusion: a soft inpainting mask becomes a per-step threshold (Levin & Fried 2023,
"Differential Diffusion: Giving Each Pixel Its Strength").

The node returns a clone of the MODEL (shared weights) carrying ``denoise_mask_function``; the sampler's
inpainting wrapper (``comfykit.engine.sampling.ksampler.InpaintDenoiser``) calls it at every step with the
latent's noise mask, as ComfyUI's ``model_options["denoise_mask_function"]``.
"""

from __future__ import annotations

from typing import Any

from .base import FLOAT, LINK, Node


class DifferentialMask:
    """Per step: 1 where the mask reaches how far sampling still has to go, else 0 (blended by ``strength``)."""

    def __init__(self, strength: float = 1.0):
        self.strength = float(strength)

    def __call__(self, sigma: Any, mask: Any, model_sampling: Any, sigmas: Any) -> Any:
        """The mask to use at ``sigma`` in a run over ``sigmas``: a pixel is repainted once its value reaches the
        remaining fraction of the run (in timesteps), so a 0.3 pixel changes only in the last 30%."""
        ms = model_sampling
        sigma_to = max(float(ms.sigma_min), float(sigmas[-1]))
        ts_from = float(ms.timestep(sigmas[0].reshape(1)))
        ts_to = float(ms.timestep(sigmas.new_tensor([sigma_to])))
        current = float(ms.timestep(sigma.reshape(-1)[:1]))
        threshold = (current - ts_to) / (ts_from - ts_to) if ts_from != ts_to else 0.0
        binary = (mask >= threshold).to(mask.dtype)
        # as ComfyUI: a strength of exactly 0 (or 1) means the plain threshold mask
        if self.strength and self.strength < 1:
            return self.strength * binary + (1 - self.strength) * mask
        return binary

    def __repr__(self) -> str:
        return f"DifferentialMask(strength={self.strength})"


class DifferentialDiffusion(Node):
    """Makes inpainting honour a soft mask: each pixel is repainted for a share of the steps equal to its value."""

    DISPLAY, CATEGORY = "Differential Diffusion", "_for_testing"
    PYTHON_MODULE = "comfy_extras.nodes_differential_diffusion"
    INPUTS = {"model": LINK("MODEL")}
    OPTIONAL = {"strength": FLOAT(1.0, 0.0, 1.0, 0.01, "Blend of the threshold mask (1) and the soft mask (0).")}
    OUTPUTS = ("MODEL",)
    FUNCTION = "apply"

    def apply(self, model: Any, strength: float = 1.0) -> tuple[Any]:
        if not hasattr(model, "clone"):
            raise ValueError(f"model must be a MODEL (a loaded diffusion model), got {type(model).__name__}")
        patched = model.clone()
        patched.denoise_mask_function = DifferentialMask(strength)
        return (patched,)
