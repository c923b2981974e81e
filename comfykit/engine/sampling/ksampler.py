"""ComfyUI's KSampler path: initial noise, sigma selection (denoise / start / end), CFG over area conds."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..models.family import ModelInputs
from .samplers import DISCARD_PENULTIMATE_SIGMA_SAMPLERS, get_sampler
from .schedulers import calculate_sigmas, model_sampling_for

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


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


# ---------------------------------------------------------------------------------------------------------
# Conditioning: [[cond [1|B, T, dim], {"pooled_output", "area", "strength", "mask", ...}], ...]. Each entry
# becomes the model's ModelInputs through model.model_inputs(); the family decides what it reads from the options.


class _Cond:
    """One conditioning entry resolved against the latent: the model inputs, crop, weight map and sigma range."""

    def __init__(self, model: Any, entry: Any, x: torch.Tensor, model_sampling: Any, negative: bool = False):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], dict)):
            raise ValueError("each conditioning entry must be [tensor [B, tokens, dim], dict]; got "
                             f"{type(entry).__name__}")
        cond, opts = entry
        if negative and "prompt_type" not in opts:
            opts = {**opts, "prompt_type": "negative"}  # ComfyUI tells the model which side a cond is on
        batch, _, height, width = x.shape
        device = x.device
        self.inputs = model.model_inputs(cond, opts, x)
        # ConditioningSetTimestepRange: the entry only takes part while sigma is within its percent range
        self.sigma_range = None
        if "start_percent" in opts or "end_percent" in opts:
            self.sigma_range = (model_sampling.percent_to_sigma(float(opts.get("start_percent", 0.0))),
                                model_sampling.percent_to_sigma(float(opts.get("end_percent", 1.0))))
        area = opts.get("area")
        if area is not None and area[0] == "percentage":
            area = (max(1, round(area[1] * height)), max(1, round(area[2] * width)),
                    round(area[3] * height), round(area[4] * width))
        if area is not None:
            ah, aw, ay, ax = (int(v) for v in area)
            ay, ax = min(ay, height - 1), min(ax, width - 1)
            area = (min(ah, height - ay), min(aw, width - ax), ay, ax)
        self.area = area
        ah, aw, ay, ax = area if area is not None else (height, width, 0, 0)
        if area is not None and self.inputs.concat is not None:  # extra channels follow the crop
            self.inputs.concat = self.inputs.concat[:, :, ay:ay + ah, ax:ax + aw]
        strength = float(opts.get("strength", 1.0))
        mask = opts.get("mask")
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.float32)
            mask = mask[None] if mask.ndim == 2 else mask
            if mask.shape[-2:] != (height, width):
                mask = torch.nn.functional.interpolate(mask[:, None], size=(height, width), mode="bilinear")[:, 0]
            mask = mask[:, ay:ay + ah, ax:ax + aw] * float(opts.get("mask_strength", 1.0))
            mult = mask[:, None].to(device).repeat(batch // mask.shape[0] or 1, x.shape[1], 1, 1)[:batch]
        else:
            mult = torch.ones((batch, x.shape[1], ah, aw), device=device)
            if area is not None:
                _feather(mult, area, height, width)
        self.mult = mult * strength

    def active(self, sigma: torch.Tensor) -> bool:
        """False while sigma is outside the entry's timestep range."""
        if self.sigma_range is None:
            return True
        start, end = self.sigma_range
        s = float(sigma.max())
        return not (s > start or s < end)


def _feather(mult: torch.Tensor, area: tuple[int, int, int, int], height: int, width: int, rr: int = 8) -> None:
    """Ramp the weight linearly over `rr` latent pixels at area edges that lie inside the image (as ComfyUI)."""
    ah, aw, ay, ax = area
    for t in range(min(rr, ah)):
        if ay != 0:
            mult[:, :, t] *= (t + 1) / rr
        if ay + ah < height:
            mult[:, :, ah - 1 - t] *= (t + 1) / rr
    for t in range(min(rr, aw)):
        if ax != 0:
            mult[:, :, :, t] *= (t + 1) / rr
        if ax + aw < width:
            mult[:, :, :, aw - 1 - t] *= (t + 1) / rr


class CFGDenoiser:
    """k-diffusion model wrapper: x, sigma -> CFG-combined denoised x0 over area/mask-weighted conds."""

    def __init__(self, model: Any, model_sampling: Any, positive: list, negative: list, cfg: float):
        self.model, self.model_sampling, self.cfg = model, model_sampling, float(cfg)
        self.positive, self.negative = positive, negative
        self._resolved: dict[int, list[_Cond]] = {}
        family = getattr(model, "family", None)
        self._repeat_context = getattr(family, "repeat_context", True)

    def _conds(self, which: int, x: torch.Tensor) -> list[_Cond]:
        if which not in self._resolved:
            entries = self.positive if which == 0 else self.negative
            self._resolved[which] = [_Cond(self.model, e, x, self.model_sampling, negative=which == 1)
                                     for e in entries]
        return self._resolved[which]

    def _run(self, items: list[tuple[int, _Cond]], x: torch.Tensor, sigma: torch.Tensor):
        """Evaluate all (which, cond) items sharing one crop and input shapes in a single batched model call."""
        cond0 = items[0][1]
        ah, aw, ay, ax = cond0.area if cond0.area is not None else (x.shape[2], x.shape[3], 0, 0)
        crop = x[:, :, ay:ay + ah, ax:ax + aw]
        n, batch = len(items), x.shape[0]
        inputs = ModelInputs.cat([c.inputs for _, c in items], batch, self._repeat_context)
        sig = sigma.repeat(n)
        ms = self.model_sampling
        x_in = ms.calculate_input(sig, crop.repeat(n, 1, 1, 1))
        out = self.model.apply(x_in, ms.timestep(sig).float(), inputs)
        den = ms.calculate_denoised(sig, out.to(x.device).float(), crop.repeat(n, 1, 1, 1))
        return den.chunk(n)

    def predictions(self, x: torch.Tensor, sigma: torch.Tensor, with_uncond: bool):
        """Weighted-average denoised predictions for the positive conds and (optionally) the negative ones."""
        todo = [0, 1] if with_uncond else [0]
        groups: dict[Any, list[tuple[int, _Cond]]] = {}
        for which in todo:
            for cond in self._conds(which, x):
                if cond.active(sigma):
                    key = (cond.area, cond.inputs.batch_key(self._repeat_context))
                    groups.setdefault(key, []).append((which, cond))
        outs = {w: torch.zeros_like(x) for w in todo}
        counts = {w: torch.full_like(x, 1e-37) for w in todo}  # ComfyUI's floor: uncovered pixels become 0
        for items in groups.values():
            for (which, cond), den in zip(items, self._run(items, x, sigma)):
                ah, aw, ay, ax = cond.area if cond.area is not None else (x.shape[2], x.shape[3], 0, 0)
                mult = cond.mult.to(x.dtype)
                outs[which][:, :, ay:ay + ah, ax:ax + aw] += den * mult
                counts[which][:, :, ay:ay + ah, ax:ax + aw] += mult
        return [outs[w] / counts[w] for w in todo]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        options = extra_args.get("model_options") or {}
        skip_uncond = math.isclose(self.cfg, 1.0) and not options.get("disable_cfg1_optimization", False)
        preds = self.predictions(x, sigma, with_uncond=not skip_uncond)
        cond = preds[0]
        uncond = torch.zeros_like(cond) if skip_uncond else preds[1]
        denoised = uncond + (cond - uncond) * self.cfg
        post = options.get("post_cfg_function")
        if post is not None:
            denoised = post({"denoised": denoised, "cond_denoised": cond, "uncond_denoised": uncond,
                             "sigma": sigma, "input": x, "cond_scale": self.cfg})
        return denoised


class InpaintDenoiser:
    """Keeps the unmasked region on the original latent (re-noised to each sigma), as ComfyUI's noise_mask."""

    def __init__(self, inner: CFGDenoiser, latent: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor):
        self.inner, self.latent, self.noise, self.mask = inner, latent, noise, mask
        self.model_sampling = inner.model_sampling

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        keep = 1.0 - self.mask
        x = x * self.mask + self.model_sampling.noise_scaling(sigma, self.noise, self.latent) * keep
        return self.inner(x, sigma, **extra_args) * self.mask + self.latent * keep


def _prepare_mask(mask: Any, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """A pixel- or latent-size noise_mask [B?, H, W] resized (bilinear) to the latent, per channel and item."""
    mask = torch.as_tensor(mask, dtype=torch.float32)
    mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
    mask = torch.nn.functional.interpolate(mask, size=(shape[2], shape[3]), mode="bilinear")
    mask = mask.repeat(1, shape[1], 1, 1)
    mask = mask.repeat(-(-shape[0] // mask.shape[0]), 1, 1, 1)[:shape[0]]
    return mask.to(device)


def _check_conds(name: str, conds: Any) -> list:
    if not isinstance(conds, (list, tuple)):
        raise ValueError(f"{name} conditioning must be a list of [tensor, dict] pairs, got {type(conds).__name__}")
    if name == "positive" and not conds:
        raise ValueError("positive conditioning is empty; connect a CLIPTextEncode output")
    return list(conds)


def common_ksampler(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                    positive: list, negative: list, latent: dict, denoise: float = 1.0, disable_noise: bool = False,
                    start_step: int | None = None, last_step: int | None = None, force_full_denoise: bool = False,
                    callback: StepCallback | None = None) -> dict:
    """Run ComfyUI's KSampler on a LATENT dict; returns a LATENT dict with the new raw "samples".

    `callback(step, total_steps, denoised_x0, x)` runs after each step (model-space tensors); an exception
    it raises stops sampling at once and propagates.
    """
    if "samples" not in latent:
        raise ValueError("latent must be a LATENT dict with a 'samples' tensor [B, C, H, W]")
    sampler = get_sampler(sampler_name)
    positive, negative = _check_conds("positive", positive), _check_conds("negative", negative)
    samples = latent["samples"].float()
    fmt = model.latent_format
    if samples.ndim != 4:
        raise ValueError(f"latent samples must be [B, C, H, W], got shape {list(samples.shape)}")
    empty = torch.count_nonzero(samples) == 0
    if empty and samples.shape[1] != fmt.latent_channels:
        # an EmptyLatentImage made for a 4-channel model, used with a 16-channel one
        samples = torch.zeros((samples.shape[0], fmt.latent_channels) + tuple(samples.shape[2:]))
    if samples.shape[1] != fmt.latent_channels:
        raise ValueError(f"latent has {samples.shape[1]} channels but the model expects {fmt.latent_channels}; "
                         "use a latent made for this model")
    if disable_noise:
        noise = torch.zeros(samples.size(), dtype=samples.dtype, layout=samples.layout, device="cpu")
    else:
        noise = prepare_noise(samples, int(seed), latent.get("batch_index"))

    ms = model_sampling_for(model)
    sigmas = select_sigmas(ms, sampler_name, scheduler, int(steps), denoise, start_step, last_step,
                           force_full_denoise)
    out = dict(latent)
    if sigmas is None:
        out["samples"] = samples
        return out

    device = torch.device(getattr(model, "device", "cpu"))
    sigmas = sigmas.to(device)
    x0 = samples.to(device)
    if not empty:  # an all-zero latent is used as is, not shifted (matters for SD3/Flux)
        x0 = fmt.process_in(x0)
    max_sigma = float(ms.sigma_max)
    max_denoise = math.isclose(max_sigma, float(sigmas[0]), rel_tol=1e-05) or float(sigmas[0]) > max_sigma
    x = ms.noise_scaling(sigmas[0], noise.to(device), x0, max_denoise)

    denoiser: Any = CFGDenoiser(model, ms, positive, negative, cfg)
    if latent.get("noise_mask") is not None:
        inpaint_noise = noise
        if sampler_name == "ddim":  # ComfyUI's ddim re-noises the kept region with its own seed+1 noise
            inpaint_noise = torch.randn(noise.shape, device="cpu",
                                        generator=torch.Generator(device="cpu").manual_seed(int(seed) + 1))
        denoiser = InpaintDenoiser(denoiser, x0, inpaint_noise.to(device),
                                   _prepare_mask(latent["noise_mask"], x0.shape, device))
    total_steps = len(sigmas) - 1

    def k_callback(info: dict) -> None:
        if callback is not None:
            callback(int(info["i"]), total_steps, info["denoised"], info["x"])

    with torch.no_grad():
        x = sampler(denoiser, x, sigmas, extra_args={"seed": int(seed), "model_options": {}}, callback=k_callback)
        x = ms.inverse_noise_scaling(sigmas[-1], x)
        out["samples"] = fmt.process_out(x.float()).cpu().float()
    return out
