"""Sampling and VAE nodes: KSampler, KSamplerAdvanced, VAEDecode, VAEEncode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .base import Node


class _Sampler(Node):
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)

    def _callback(self, model: Any) -> Callable[..., None]:
        """Per-step hook: stop if interrupted, emit ``progress`` (value = step+1), a preview of x0 if wanted."""
        return self.engine.sampler_callback(self, model)

    def _run(self, model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
             positive: list, negative: list, latent_image: dict[str, Any], **options: Any) -> tuple[dict[str, Any]]:
        from ..sampling.ksampler import common_ksampler

        self.check_interrupt()
        callback = self._callback(model)
        out = self.engine.call_with(
            lambda: common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                    latent_image, callback=callback, **options), model)
        return (out if isinstance(out, dict) else out[0],)


class KSampler(_Sampler):
    """Denoise a latent with a model, prompts, a sampler and a scheduler."""

    def sample(self, model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
               positive: list, negative: list, latent_image: dict[str, Any],
               denoise: float = 1.0) -> tuple[dict[str, Any]]:
        return self._run(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                         denoise=denoise)


class KSamplerAdvanced(_Sampler):
    """KSampler with a step range, optional added noise and optional leftover noise."""

    def sample(self, model: Any, add_noise: str, noise_seed: int, steps: int, cfg: float, sampler_name: str,
               scheduler: str, positive: list, negative: list, latent_image: dict[str, Any], start_at_step: int,
               end_at_step: int, return_with_leftover_noise: str, denoise: float = 1.0) -> tuple[dict[str, Any]]:
        return self._run(model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                         denoise=denoise, disable_noise=add_noise == "disable", start_step=start_at_step,
                         last_step=end_at_step, force_full_denoise=return_with_leftover_noise != "enable")


class VAEDecode(Node):
    """Latent to images ``[B,H,W,3]``."""

    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)

    def decode(self, vae: Any, samples: dict[str, Any]) -> tuple[torch.Tensor]:
        images = self.engine.call_with(lambda: vae.decode(samples["samples"]), vae)
        if images.ndim == 5:  # video VAEs: frames become batch items
            images = images.reshape(-1, images.shape[-3], images.shape[-2], images.shape[-1])
        return (images,)


class VAEEncode(Node):
    """Images to a latent (alpha dropped)."""

    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)

    def encode(self, vae: Any, pixels: torch.Tensor) -> tuple[dict[str, Any]]:
        return ({"samples": self.engine.call_with(lambda: vae.encode(pixels[:, :, :, :3]), vae)},)
