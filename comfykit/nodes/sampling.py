"""Sampling and VAE nodes: KSampler, KSamplerAdvanced, VAEDecode, VAEEncode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import COMBO, FLOAT, INT, LINK, MAX_SEED, Node

# ComfyUI's relative order; the engine's sampling part may append names it implements.
SAMPLER_NAMES = ("euler", "euler_ancestral", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms",
                 "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
                 "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
                 "ipndm", "ddim", "uni_pc", "uni_pc_bh2")
SCHEDULER_NAMES = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal")

_MODEL = LINK("MODEL", "Diffusion model.")
_STEPS = INT(20, 1, 10000, tip="Number of denoising steps.")
_CFG = FLOAT(8.0, 0.0, 100.0, 0.1, "Classifier-free guidance scale.", round=0.01)
_SAMPLER = COMBO(SAMPLER_NAMES, "Sampling algorithm.")
_SCHEDULER = COMBO(SCHEDULER_NAMES, "How noise levels are spaced over the steps.")
_POSITIVE = LINK("CONDITIONING", "What the image should show.")
_NEGATIVE = LINK("CONDITIONING", "What the image should avoid.")
_LATENT = LINK("LATENT", "Latent to denoise.")


def step_callback(node: Node, model: Any) -> Callable[..., None]:
    """Per-step hook of a sampling node: stop if interrupted, emit ``progress``, previews only for listeners."""
    return node.engine.sampler_callback(node, model)


def _ksampler(node: Node, model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
              positive: list, negative: list, latent_image: dict[str, Any], **options: Any) -> tuple[dict]:
    from ..engine.models.controlnet import control_models
    from ..engine.sampling.ksampler import common_ksampler

    node.check_interrupt()
    callback = step_callback(node, model)
    out = node.call_with(lambda: common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive,
                                                 negative, latent_image, callback=callback, **options),
                         model, *control_models(positive, negative))
    return (out,)


class KSampler(Node):
    """Denoises a latent with a model, prompts, a sampler and a scheduler."""

    DISPLAY, CATEGORY = "KSampler", "sampling"
    INPUTS = {"model": _MODEL, "seed": INT(0, 0, MAX_SEED, tip="Noise seed.", control_after_generate=True),
              "steps": _STEPS, "cfg": _CFG, "sampler_name": _SAMPLER, "scheduler": _SCHEDULER,
              "positive": _POSITIVE, "negative": _NEGATIVE, "latent_image": _LATENT,
              "denoise": FLOAT(1.0, 0.0, 1.0, 0.01, "How much of the latent to replace (1 = all).")}
    OUTPUTS = ("LATENT",)
    FUNCTION = "sample"

    def sample(self, model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
               positive: list, negative: list, latent_image: dict[str, Any], denoise: float) -> tuple[dict]:
        return _ksampler(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                         denoise=denoise)


class KSamplerAdvanced(Node):
    """KSampler with control over the step range and the added noise."""

    DISPLAY, CATEGORY = "KSampler (Advanced)", "sampling"
    INPUTS = {"model": _MODEL, "add_noise": COMBO(("enable", "disable")),
              "noise_seed": INT(0, 0, MAX_SEED, tip="Noise seed.", control_after_generate=True),
              "steps": _STEPS, "cfg": _CFG, "sampler_name": _SAMPLER, "scheduler": _SCHEDULER,
              "positive": _POSITIVE, "negative": _NEGATIVE, "latent_image": _LATENT,
              "start_at_step": INT(0, 0, 10000, tip="First step to run."),
              "end_at_step": INT(10000, 0, 10000, tip="Step to stop at."),
              "return_with_leftover_noise": COMBO(("disable", "enable"))}
    OUTPUTS = ("LATENT",)
    FUNCTION = "sample"

    def sample(self, model: Any, add_noise: str, noise_seed: int, steps: int, cfg: float, sampler_name: str,
               scheduler: str, positive: list, negative: list, latent_image: dict[str, Any], start_at_step: int,
               end_at_step: int, return_with_leftover_noise: str) -> tuple[dict]:
        return _ksampler(self, model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                         latent_image, denoise=1.0, disable_noise=add_noise == "disable", start_step=start_at_step,
                         last_step=end_at_step, force_full_denoise=return_with_leftover_noise != "enable")


class VAEDecode(Node):
    """Decodes a latent into images."""

    DISPLAY, CATEGORY = "VAE Decode", "latent"
    INPUTS = {"samples": LINK("LATENT", "Latent to decode."), "vae": LINK("VAE", "VAE to decode with.")}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "decode"

    def decode(self, samples: dict[str, Any], vae: Any) -> tuple[Any]:
        images = self.call_with(lambda: vae.decode(samples["samples"]), vae)
        if images.ndim == 5:  # video VAEs: frames become batch items
            images = images.reshape(-1, images.shape[-3], images.shape[-2], images.shape[-1])
        return (images,)


class VAEEncode(Node):
    """Encodes images into a latent (alpha dropped)."""

    DISPLAY, CATEGORY = "VAE Encode", "latent"
    INPUTS = {"pixels": LINK("IMAGE", "Images to encode."), "vae": LINK("VAE", "VAE to encode with.")}
    OUTPUTS = ("LATENT",)
    FUNCTION = "encode"

    def encode(self, pixels: Any, vae: Any) -> tuple[dict[str, Any]]:
        return ({"samples": self.call_with(lambda: vae.encode(pixels[:, :, :, :3]), vae)},)
