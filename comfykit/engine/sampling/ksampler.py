"""The one sampling path of KSampler and SamplerCustom(Advanced): NOISE, SIGMAS, SAMPLER and GUIDER.

``prepare_noise`` draws ComfyUI's initial noise, ``select_sigmas`` is KSampler's denoise / start / end choice of
sigmas, :class:`Sampler` is the SAMPLER type (a k-diffusion function with ComfyUI's inpaint options) and
:func:`sample_latent` runs a guider (``guiders``) over a LATENT dict. ``common_ksampler`` is KSampler on that path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .guiders import CFGDenoiser, CFGGuider, check_conds
from .samplers import DISCARD_PENULTIMATE_SIGMA_SAMPLERS, get_sampler
from .schedulers import calculate_sigmas, model_sampling_for

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]

__all__ = ["CFGDenoiser", "DisabledNoise", "InpaintDenoiser", "RandomNoise", "Sampler", "common_ksampler",
           "prepare_noise", "sample_latent", "select_sigmas"]


def prepare_noise(latent: torch.Tensor, seed: int, batch_index: list[int] | None = None) -> torch.Tensor:
    """The initial noise ComfyUI draws for `latent`: CPU generator seeded with `seed`, float32, device-independent.

    With `batch_index`, noise item k is the draw for index batch_index[k] of one long sequential draw, so
    a single image of a batch can be reproduced on its own.
    """
    # the same numbers as ComfyUI's torch.manual_seed(seed), without reseeding the process-wide generator
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if batch_index is not None and len(batch_index) != latent.shape[0]:
        raise ValueError(f"batch_index has {len(batch_index)} entries but the latent holds {latent.shape[0]} "
                         "items; give one index per item or drop batch_index")
    if batch_index is None:
        return torch.randn(latent.size(), dtype=latent.dtype, layout=latent.layout, generator=generator,
                           device="cpu")
    wanted = sorted(set(int(i) for i in batch_index))
    draws = {}
    for i in range(wanted[-1] + 1):
        noise = torch.randn([1] + list(latent.size())[1:], dtype=latent.dtype, layout=latent.layout,
                            generator=generator, device="cpu")
        if i in wanted:
            draws[i] = noise
    return torch.cat([draws[int(i)] for i in batch_index], dim=0)


def select_sigmas(model_sampling: Any, sampler_name: str, scheduler: str, steps: int, denoise: float = 1.0,
                  start_step: int | None = None, last_step: int | None = None,
                  force_full_denoise: bool = False) -> torch.Tensor | None:
    """The sigmas KSampler(Advanced) runs over, or None when the latent must come back unchanged."""

    def full(n: int) -> torch.Tensor:
        if sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
            s = calculate_sigmas(model_sampling, scheduler, n + 1)
            return torch.cat([s[:-2], s[-1:]])
        return calculate_sigmas(model_sampling, scheduler, n)

    if denoise is None or denoise > 0.9999:
        sigmas = full(steps)
    elif denoise <= 0.0:
        return None
    else:
        sigmas = full(int(steps / denoise))[-(steps + 1):]
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return None
    if len(sigmas) == 0:
        return None
    return sigmas


class InpaintDenoiser:
    """Keeps the unmasked region on the original latent (re-noised to each sigma), as ComfyUI's noise_mask.

    ``mask_function(sigma, mask, model_sampling, sigmas)``, when given (the model's ``denoise_mask_function``,
    set by DifferentialDiffusion), replaces the mask at each step, as ComfyUI's model_options hook.
    """

    def __init__(self, inner: Any, latent: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor,
                 sigmas: torch.Tensor | None = None, mask_function: Callable[..., torch.Tensor] | None = None):
        self.inner, self.latent, self.noise, self.mask = inner, latent, noise, mask
        self.sigmas, self.mask_function = sigmas, mask_function
        self.model_sampling = inner.model_sampling

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        mask = self.mask
        if self.mask_function is not None:
            mask = self.mask_function(sigma, mask, self.model_sampling, self.sigmas)
        keep = 1.0 - mask
        x = x * mask + self.model_sampling.noise_scaling(sigma, self.noise, self.latent) * keep
        return self.inner(x, sigma, **extra_args) * mask + self.latent * keep


def _prepare_mask(mask: Any, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """A pixel- or latent-size noise_mask [B?, H, W] resized (bilinear) to the latent, per channel and item."""
    mask = torch.as_tensor(mask, dtype=torch.float32)
    mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
    mask = torch.nn.functional.interpolate(mask, size=(shape[2], shape[3]), mode="bilinear")
    mask = mask.repeat(1, shape[1], 1, 1)
    mask = mask.repeat(-(-shape[0] // mask.shape[0]), 1, 1, 1)[:shape[0]]
    return mask.to(device)


# ---------------------------------------------------------------------------------------------------------
# The NOISE and SAMPLER types, and the one sampling path KSampler and SamplerCustom(Advanced) share.


class RandomNoise:
    """NOISE: ComfyUI's initial noise for a LATENT (``prepare_noise`` with its seed and ``batch_index``)."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def generate_noise(self, latent: dict[str, Any]) -> torch.Tensor:
        """Noise shaped like ``latent["samples"]``, on the CPU."""
        return prepare_noise(latent["samples"], self.seed, latent.get("batch_index"))

    def __repr__(self) -> str:
        return f"RandomNoise(seed={self.seed})"


class DisabledNoise:
    """NOISE that adds nothing (ComfyUI's DisableNoise; its seed, 0, still seeds the samplers' step noise)."""

    seed = 0

    def generate_noise(self, latent: dict[str, Any]) -> torch.Tensor:
        """Zeros shaped like ``latent["samples"]``, on the CPU."""
        samples = latent["samples"]
        return torch.zeros(samples.size(), dtype=samples.dtype, layout=samples.layout, device="cpu")

    def __repr__(self) -> str:
        return "DisabledNoise()"


class Sampler:
    """SAMPLER: a k-diffusion sampler function and ComfyUI's options for it (its KSAMPLER object).

    >>> Sampler.named("euler_ancestral").sample(denoiser, sigmas, latent, noise)
    """

    def __init__(self, name: str, function: Callable[..., torch.Tensor] | None = None,
                 extra_options: dict[str, Any] | None = None, inpaint_options: dict[str, Any] | None = None):
        self.name = name
        self.function = function if function is not None else get_sampler(name)
        self.extra_options = dict(extra_options or {})
        self.inpaint_options = dict(inpaint_options or {})

    @classmethod
    def named(cls, name: str) -> Sampler:
        """The sampler KSampler's ``sampler_name`` selects (ComfyUI's ``sampler_object``)."""
        # ComfyUI's ddim is euler whose kept (unmasked) region is re-noised with its own seed+1 noise
        return cls(name, inpaint_options={"random": True} if name == "ddim" else None)

    def sample(self, denoiser: Any, sigmas: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor,
               denoise_mask: torch.Tensor | None = None, seed: int = 0,
               callback: StepCallback | None = None) -> torch.Tensor:
        """Denoise model-space ``latent`` over ``sigmas``, starting from ``noise`` added at ``sigmas[0]``."""
        ms = denoiser.model_sampling
        if denoise_mask is not None:
            kept_noise = noise
            if self.inpaint_options.get("random", False):
                kept_noise = torch.randn(noise.shape, device="cpu",
                                         generator=torch.Generator(device="cpu").manual_seed(int(seed) + 1))
            mask_function = getattr(getattr(denoiser, "model", None), "denoise_mask_function", None)
            denoiser = InpaintDenoiser(denoiser, latent, kept_noise.to(noise.dtype).to(noise.device), denoise_mask,
                                       sigmas, mask_function)
        max_sigma = float(ms.sigma_max)
        max_denoise = math.isclose(max_sigma, float(sigmas[0]), rel_tol=1e-05) or float(sigmas[0]) > max_sigma
        x = ms.noise_scaling(sigmas[0], noise, latent, max_denoise)
        total_steps = len(sigmas) - 1

        def k_callback(info: dict) -> None:
            if callback is not None:
                callback(int(info["i"]), total_steps, info["denoised"], info["x"])

        x = self.function(denoiser, x, sigmas, extra_args={"seed": int(seed), "model_options": {}},
                          callback=k_callback, **self.extra_options)
        return ms.inverse_noise_scaling(sigmas[-1], x)

    def __repr__(self) -> str:
        return f"Sampler({self.name!r})"


def _model_latent(latent: dict, fmt: Any) -> tuple[torch.Tensor, bool]:
    """The latent's float samples in the model's channel count, and whether they are all zeros."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError("latent must be a LATENT dict with a 'samples' tensor [B, C, H, W]")
    samples = latent["samples"].float()
    if samples.ndim != 4:
        raise ValueError(f"latent samples must be [B, C, H, W], got shape {list(samples.shape)}")
    empty = bool(torch.count_nonzero(samples) == 0)
    if empty and samples.shape[1] != fmt.latent_channels:
        # an EmptyLatentImage made for a 4-channel model, used with a 16-channel one
        samples = torch.zeros((samples.shape[0], fmt.latent_channels) + tuple(samples.shape[2:]))
    if samples.shape[1] != fmt.latent_channels:
        raise ValueError(f"latent has {samples.shape[1]} channels but the model expects {fmt.latent_channels}; "
                         "use a latent made for this model")
    return samples, empty


def sample_latent(guider: Any, sampler: Sampler, sigmas: torch.Tensor | None, latent: dict, noise: Any,
                  seed: int | None = None, callback: StepCallback | None = None) -> tuple[dict, dict]:
    """SamplerCustomAdvanced: denoise a LATENT dict; returns the ``output`` and ``denoised_output`` LATENT dicts.

    ``guider`` (see ``guiders``) holds the model and conds, ``noise`` is a NOISE (``.seed``,
    ``generate_noise(latent)``), ``seed`` (default ``noise.seed``) seeds the samplers' step noise. The latent's
    ``noise_mask`` limits the change to the masked region. ``callback(step, total_steps, denoised_x0, x)`` runs
    after each step (model-space tensors); an exception it raises stops sampling at once and propagates.
    ``denoised_output`` is the last step's x0 prediction (the output itself when no step ran).
    """
    model = guider.model
    fmt = model.latent_format
    samples, empty = _model_latent(latent, fmt)
    out = {**latent, "samples": samples}
    initial = noise.generate_noise(out)
    if sigmas is None or len(sigmas) == 0:
        return out, out
    device = torch.device(getattr(model, "device", "cpu"))
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).to(device)
    x0 = samples.to(device)
    if not empty:  # an all-zero latent is used as is, not shifted (matters for SD3/Flux)
        x0 = fmt.process_in(x0)
    mask = None
    if latent.get("noise_mask") is not None:
        mask = _prepare_mask(latent["noise_mask"], x0.shape, device)
    ms = model_sampling_for(model)
    denoiser = guider.denoiser(ms, {"latent_image": x0, "denoise_mask": mask})
    last: dict[str, torch.Tensor] = {}

    def step(i: int, total: int, denoised: torch.Tensor, x: torch.Tensor) -> None:
        last["x0"] = denoised
        if callback is not None:
            callback(i, total, denoised, x)

    with torch.no_grad():
        x = sampler.sample(denoiser, sigmas, x0, initial.to(device), mask, int(noise.seed if seed is None else seed),
                           step)
        out["samples"] = fmt.process_out(x.float()).cpu().float()
    denoised_out = out
    if "x0" in last:
        denoised_out = {**out, "samples": fmt.process_out(last["x0"].float()).cpu()}
    return out, denoised_out


def common_ksampler(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                    positive: list, negative: list, latent: dict, denoise: float = 1.0, disable_noise: bool = False,
                    start_step: int | None = None, last_step: int | None = None, force_full_denoise: bool = False,
                    callback: StepCallback | None = None) -> dict:
    """Run ComfyUI's KSampler on a LATENT dict; returns a LATENT dict with the new raw "samples".

    The same path as SamplerCustomAdvanced with RandomNoise (or DisabledNoise), a CFGGuider, the named sampler
    and the scheduler's sigmas. `callback(step, total_steps, denoised_x0, x)` runs after each step (model-space
    tensors); an exception it raises stops sampling at once and propagates.
    """
    sampler = Sampler.named(sampler_name)
    guider = CFGGuider(model, check_conds("positive", positive, required=True), check_conds("negative", negative),
                       cfg)
    noise = DisabledNoise() if disable_noise else RandomNoise(seed)
    sigmas = select_sigmas(model_sampling_for(model), sampler_name, scheduler, int(steps), denoise, start_step,
                           last_step, force_full_denoise)
    return sample_latent(guider, sampler, sigmas, latent, noise, seed=int(seed), callback=callback)[0]
