"""Noise schedules: ComfyUI's model_sampling objects (discrete eps/v, flow) and its nine sigma schedulers."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal"]


def _rescale_zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed": zero terminal SNR."""
    alphas_bar_sqrt = (1.0 / (sigmas * sigmas + 1.0)).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt ** 2
    alphas_bar[-1] = 4.8973451890853435e-08  # ComfyUI's floor, keeps the last sigma finite
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


def _view(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(sigma.shape[:1] + (1,) * (x.ndim - 1)) if sigma.ndim else sigma


class ModelSamplingDiscrete:
    """DDPM schedule of SD1.x/SD2.x/SDXL: 1000 linear betas, eps or v prediction, optional zero terminal SNR."""

    def __init__(self, prediction: str = "eps", linear_start: float = 0.00085, linear_end: float = 0.012,
                 timesteps: int = 1000, zsnr: bool = False):
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        self.prediction = prediction
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = _rescale_zero_terminal_snr(sigmas)
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The nearest table index (an integer tensor) to each sigma, by distance in log sigma."""
        sigma = torch.as_tensor(sigma)
        dists = sigma.log().to(self.log_sigmas.device).reshape(-1)[None] - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep, interpolating log sigma linearly between table entries."""
        timestep = torch.as_tensor(timestep)
        t = timestep.float().to(self.log_sigmas.device).clamp(0, len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the way through sampling (0 = pure noise, 1 = clean)."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Scale the noisy latent to unit variance before the UNet (sigma_data = 1)."""
        sigma = _view(sigma, x)
        return x / (sigma ** 2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x0 from the raw UNet output (eps or v)."""
        sigma = _view(sigma, model_output)
        if self.prediction == "eps":
            return x - model_output * sigma
        return x / (sigma ** 2 + 1.0) - model_output * sigma / (sigma ** 2 + 1.0) ** 0.5

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        """The starting x: noise at sigma added to the latent (sqrt(1+sigma^2) when starting from pure noise)."""
        sigma = _view(sigma, noise)
        scale = (1.0 + sigma ** 2.0) ** 0.5 if max_denoise else sigma
        return noise * scale + latent_image

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Identity for eps/v models."""
        return latent


class _ModelSamplingConst:
    """Rectified-flow ("CONST") prediction shared by SD3 and Flux: x = (1-sigma)*x0 + sigma*noise."""

    prediction = "flow"
    sigmas: torch.Tensor

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x - model_output * _view(sigma, model_output)

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        sigma = _view(sigma, noise)
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return latent / (1.0 - _view(sigma, latent))


class ModelSamplingDiscreteFlow(_ModelSamplingConst):
    """SD3's shifted flow schedule: sigma(t) = shift*t / (1 + (shift-1)*t), t = timestep/1000."""

    def __init__(self, shift: float = 3.0, timesteps: int = 1000, multiplier: float = 1000.0):
        self.shift, self.multiplier = shift, multiplier
        self.sigmas = self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps * multiplier)

    def _shift(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.shift == 1.0 else self.shift * t / (1 + (self.shift - 1) * t)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return self._shift(torch.as_tensor(timestep) / self.multiplier)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma) * self.multiplier

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self._shift(torch.tensor(1.0 - percent)))


class ModelSamplingFlux(_ModelSamplingConst):
    """Flux's schedule: sigma(t) = e^shift / (e^shift + (1/t - 1)); the timestep is sigma itself."""

    def __init__(self, shift: float = 1.15, timesteps: int = 10000):
        self.shift = shift
        self.sigmas = self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timestep)
        return math.exp(self.shift) / (math.exp(self.shift) + (1 / t - 1))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor(1.0 - percent)))


def flux_shift(width: int, height: int, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """ModelSamplingFlux's shift: linear in the image's 2x2-patch tokens, base_shift at 256 and max_shift at 4096."""
    slope = (max_shift - base_shift) / (4096 - 256)
    return (width * height / (8 * 8 * 2 * 2)) * slope + (base_shift - slope * 256)


ModelSampling = Any  # any of the classes above: .sigmas, sigma_min/max, sigma(), timestep(), calculate_*()


def model_sampling_for(model: Any) -> ModelSampling:
    """The model_sampling of a DiffusionModel: its own `.model_sampling` if it has one, else from `.arch`."""
    own = getattr(model, "model_sampling", None)
    if own is not None:
        return own
    arch, prediction = getattr(model, "arch", "sd1"), getattr(model, "prediction", "eps")
    if arch == "sd3":
        return ModelSamplingDiscreteFlow(shift=3.0)
    if arch == "flux":
        return ModelSamplingFlux(shift=1.15)
    return ModelSamplingDiscrete(prediction, zsnr=bool(getattr(model, "zsnr", False)))


def is_flow(model_sampling: ModelSampling) -> bool:
    """True for rectified-flow (CONST) schedules, whose samplers use the RF variants."""
    return isinstance(model_sampling, _ModelSamplingConst)


# ---------------------------------------------------------------------------------------------------------
# Schedulers: each returns steps+1 float32 sigmas ending in 0.


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (rho = 7)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Sigmas evenly spaced in log sigma."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def simple_scheduler(s: ModelSampling, steps: int) -> torch.Tensor:
    """Evenly strided entries of the model's sigma table, from the top ("trailing" spacing)."""
    stride = len(s.sigmas) / steps
    sigs = [float(s.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.FloatTensor(sigs + [0.0])


def normal_scheduler(s: ModelSampling, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps evenly spaced between those of sigma_max and sigma_min ("sgm": endpoint excluded)."""
    start, end = s.timestep(s.sigma_max), s.timestep(s.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(s.sigma(t)) for t in timesteps]
    return torch.FloatTensor(sigs + ([0.0] if append_zero else []))


def ddim_scheduler(s: ModelSampling, steps: int) -> torch.Tensor:
    """DDIM's uniform timestep stride starting from index 1 ("leading" spacing)."""
    x = 1
    if math.isclose(float(s.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs = []
    else:
        sigs = [0.0]
    stride = max(len(s.sigmas) // steps, 1)
    while x < len(s.sigmas):
        sigs.append(float(s.sigmas[x]))
        x += stride
    return torch.FloatTensor(sigs[::-1])


def beta_scheduler(s: ModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Lee et al. 2024, "Beta Sampling is All You Need": timesteps at Beta(0.6, 0.6) quantiles."""
    import numpy as np
    import scipy.stats

    total = len(s.sigmas) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(scipy.stats.beta.ppf(ts, alpha, beta) * total)
    sigs, last = [], -1.0
    for t in ts:
        if t != last:  # rounding can repeat a timestep; ComfyUI keeps it once
            sigs.append(float(s.sigmas[int(t)]))
        last = t
    return torch.FloatTensor(sigs + [0.0])


def linear_quadratic_scheduler(s: ModelSampling, steps: int, threshold_noise: float = 0.025,
                               linear_steps: int | None = None) -> torch.Tensor:
    """Mochi's schedule: linear up to threshold_noise for half the steps, then quadratic to 1."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps ** 2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps ** 2)
        const = quadratic_coef * (linear_steps ** 2)
        quadratic = [quadratic_coef * i ** 2 + linear_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - v for v in linear + quadratic + [1.0]]
    return torch.FloatTensor(schedule) * float(s.sigma_max)


def kl_optimal_scheduler(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Align Your Steps' KL-optimal schedule: linear in arctan(sigma)."""
    idx = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = idx.new_zeros(n + 1)
    sigmas[:-1] = (idx * math.atan(sigma_min) + (1 - idx) * math.atan(sigma_max)).tan_()
    return sigmas


def calculate_sigmas(model_sampling: ModelSampling, name: str, steps: int) -> torch.Tensor:
    """The steps+1 sigmas ComfyUI's scheduler `name` gives for `model_sampling` (float32, last one 0)."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    steps = int(steps)
    smin, smax = float(model_sampling.sigma_min), float(model_sampling.sigma_max)
    if name == "simple":
        return simple_scheduler(model_sampling, steps)
    if name == "sgm_uniform":
        return normal_scheduler(model_sampling, steps, sgm=True)
    if name == "karras":
        return get_sigmas_karras(steps, smin, smax)
    if name == "exponential":
        return get_sigmas_exponential(steps, smin, smax)
    if name == "ddim_uniform":
        return ddim_scheduler(model_sampling, steps)
    if name == "beta":
        return beta_scheduler(model_sampling, steps)
    if name == "normal":
        return normal_scheduler(model_sampling, steps)
    if name == "linear_quadratic":
        return linear_quadratic_scheduler(model_sampling, steps)
    if name == "kl_optimal":
        return kl_optimal_scheduler(steps, smin, smax)
    import difflib

    close = difflib.get_close_matches(str(name), SCHEDULER_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown scheduler {name!r}{hint}; expected one of {SCHEDULER_NAMES}")
