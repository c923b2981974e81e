"""k-diffusion style samplers with ComfyUI 0.3.64's semantics.

Every sampler has one signature, ``sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None)``:
``model(x, sigma_batch, **extra_args)`` returns the denoised x0, ``x`` starts noised at ``sigmas[0]``, and
``callback({"x", "i", "sigma", "sigma_hat", "denoised"})`` runs once per step. ``extra_args["seed"]`` seeds the
step noise. ``model.model_sampling`` (when present) tells rectified-flow models apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .noise import BrownianTreeNoiseSampler, default_noise_sampler
from .schedulers import is_flow

Sampler = Callable[..., torch.Tensor]

DISCARD_PENULTIMATE_SIGMA_SAMPLERS = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}


def _steps(sigmas: torch.Tensor, disable: bool | None = None) -> range:
    # disable is kept for k-diffusion's signature; progress goes through the callback, never a tqdm bar
    return range(len(sigmas) - 1)


def _model_sampling(model: Any) -> Any:
    return getattr(model, "model_sampling", None)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The Karras ODE derivative dx/dsigma = (x - denoised) / sigma."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0):
    """Split a step into a deterministic step down to sigma_down plus fresh noise of size sigma_up."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _half_log_snr_fns(model: Any):
    """lambda(sigma) = -log sigma (eps/v), or log((1-sigma)/sigma) for flow models, and its inverse."""
    if is_flow(_model_sampling(model)):
        return (lambda s: torch.log((1 - s) / s)), (lambda lam: torch.sigmoid(-lam))
    return (lambda s: s.log().neg()), (lambda lam: lam.neg().exp())


def _offset_first_sigma(sigmas: torch.Tensor, model: Any) -> torch.Tensor:
    # flow models start at sigma 1, where the half-log-SNR is -inf; step in from there slightly
    ms = _model_sampling(model)
    if len(sigmas) > 1 and is_flow(ms) and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = ms.percent_to_sigma(1e-4)
    return sigmas


def _report(callback, x, i, sigma, denoised, sigma_hat=None):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma if sigma_hat is None else sigma_hat,
                  "denoised": denoised})


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler's method, Karras et al. 2022 Algorithm 2 without churn."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        _report(callback, x, i, sigmas[i], denoised)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler with CFG++ (Chung et al. 2024): step direction from the unconditional prediction."""
    extra_args = {} if extra_args is None else dict(extra_args)
    uncond = [None]

    def post_cfg(args):
        uncond[0] = args["uncond_denoised"]
        return args["denoised"]

    options = dict(extra_args.get("model_options") or {})
    options.update(post_cfg_function=post_cfg, disable_cfg1_optimization=True)
    extra_args["model_options"] = options
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], uncond[0])
        _report(callback, x, i, sigmas[i], denoised)
        x = denoised + d * sigmas[i + 1]
    return x


def _sample_euler_ancestral_rf(model, x, sigmas, extra_args, callback, noise_sampler, eta=1.0, s_noise=1.0):
    """Ancestral Euler for rectified flow: step down, then rescale and re-noise to sigma_next."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        sigma_down = sigmas[i + 1] * (1 + (sigmas[i + 1] / sigmas[i] - 1) * eta)
        alpha_next, alpha_down = 1 - sigmas[i + 1], 1 - sigma_down
        renoise = (sigmas[i + 1] ** 2 - sigma_down ** 2 * alpha_next ** 2 / alpha_down ** 2) ** 0.5
        ratio = sigma_down / sigmas[i]
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = (alpha_next / alpha_down) * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0):
    """Ancestral sampling with Euler steps (k-diffusion)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed"))
    if is_flow(_model_sampling(model)):
        return _sample_euler_ancestral_rf(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise)
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i]) + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Heun's second-order method, Karras et al. 2022 Algorithm 2 (Euler on the last step)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        _report(callback, x, i, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


def sample_heunpp2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Heun++ (sd-webui-samplers-scheduler): a third evaluation weighted by the sigmas while two steps remain."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    s_end = sigmas[-1]
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        _report(callback, x, i, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2] * s_in, **extra_args))
            w2, w3 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
            x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver-2 as in k-diffusion (Karras et al. 2022): a midpoint step in log sigma."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0):
    """Ancestral sampling with DPM-Solver-2 steps (k-diffusion)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed"))
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def linear_multistep_coeff(order: int, t, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the j-th Lagrange basis polynomial through the last `order` sigmas."""
    from scipy import integrate

    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep (Adams-Bashforth in sigma) of order 4, k-diffusion's LMS."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds = []
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def _sample_dpmpp_2s_ancestral_rf(model, x, sigmas, extra_args, callback, noise_sampler, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2S) ancestral for rectified flow, with lambda = log((1-sigma)/sigma)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down = sigmas[i + 1] * (1 + (sigmas[i + 1] / sigmas[i] - 1) * eta)
        alpha_next, alpha_down = 1 - sigmas[i + 1], 1 - sigma_down
        renoise = (sigmas[i + 1] ** 2 - sigma_down ** 2 * alpha_next ** 2 / alpha_down ** 2) ** 0.5
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            if sigmas[i] == 1.0:
                sigma_s = 0.9999  # lambda is -inf at sigma 1
            else:
                lam, lam_down = ((1 - sigmas[i]) / sigmas[i]).log(), ((1 - sigma_down) / sigma_down).log()
                sigma_s = ((lam + (lam_down - lam) / 2).exp() + 1) ** -1
            ratio = sigma_s / sigmas[i]
            denoised_2 = model(ratio * x + (1 - ratio) * denoised, sigma_s * s_in, **extra_args)
            ratio = sigma_down / sigmas[i]
            x = ratio * x + (1 - ratio) * denoised_2
        if sigmas[i + 1] > 0 and eta > 0:
            x = (alpha_next / alpha_down) * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                              s_noise=1.0):
    """Ancestral sampling with DPM-Solver++(2S) second-order steps (Lu et al. 2022)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed"))
    if is_flow(_model_sampling(model)):
        return _sample_dpmpp_2s_ancestral_rf(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise)
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            # t = -log sigma; the intermediate point is halfway in t
            t, t_next = sigmas[i].log().neg(), sigma_down.log().neg()
            h = t_next - t
            sigma_s = (t + h / 2).neg().exp()
            x_2 = (sigma_s / sigmas[i]) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, sigma_s * s_in, **extra_args)
            x = (sigma_down / sigmas[i]) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                      r=0.5, cpu=True):
    extra_args = {} if extra_args is None else extra_args
    if len(sigmas) <= 1:
        return x
    noise_sampler = BrownianTreeNoiseSampler.for_sigmas(x, sigmas, extra_args.get("seed"), cpu)
    lambda_fn, sigma_fn = _half_log_snr_fns(model)
    sigmas = _offset_first_sigma(sigmas, model)
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        fac = 1 / (2 * r)
        sigma_s_1 = sigma_fn(lambda_s_1)
        alpha_s = sigmas[i] * lambda_s.exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        # step 1: to the intermediate point lambda_s_1, with its share of the noise
        sd, su = get_ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_s_1 * noise_sampler(sigmas[i], sigma_s_1) * s_noise * su
        denoised_2 = model(x_2, sigma_s_1 * s_in, **extra_args)
        # step 2: the full step with the blended prediction
        sd, su = get_ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++ (stochastic), k-diffusion's two-evaluation SDE variant with Brownian-tree noise on CPU."""
    return _sample_dpmpp_sde(model, x, sigmas, extra_args, callback, disable, cpu=True)


def sample_dpmpp_sde_gpu(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++ (stochastic) with the Brownian tree on the latent's device."""
    return _sample_dpmpp_sde(model, x, sigmas, extra_args, callback, disable, cpu=False)


def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M), Lu et al. 2022: second-order multistep in t = -log sigma."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            denoised_d = denoised
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def _sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                         solver_type="midpoint", cpu=True):
    extra_args = {} if extra_args is None else extra_args
    if len(sigmas) <= 1:
        return x
    noise_sampler = BrownianTreeNoiseSampler.for_sigmas(x, sigmas, extra_args.get("seed"), cpu)
    lambda_fn, _ = _half_log_snr_fns(model)
    sigmas = _offset_first_sigma(sigmas, model)
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h, h_last = None, None, None
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() \
                    * s_noise
        old_denoised, h_last = denoised, h
    return x


def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) SDE, midpoint variant, Brownian-tree noise on CPU."""
    return _sample_dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable)


def sample_dpmpp_2m_sde_gpu(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) SDE, midpoint variant, Brownian tree on the latent's device."""
    return _sample_dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, cpu=False)


def sample_dpmpp_2m_sde_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) SDE, Heun variant, Brownian-tree noise on CPU."""
    return _sample_dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, solver_type="heun")


def sample_dpmpp_2m_sde_heun_gpu(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) SDE, Heun variant, Brownian tree on the latent's device."""
    return _sample_dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, solver_type="heun", cpu=False)


def _sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                         cpu=True):
    extra_args = {} if extra_args is None else extra_args
    if len(sigmas) <= 1:
        return x
    noise_sampler = BrownianTreeNoiseSampler.for_sigmas(x, sigmas, extra_args.get("seed"), cpu)
    lambda_fn, _ = _half_log_snr_fns(model)
    sigmas = _offset_first_sigma(sigmas, model)
    s_in = x.new_ones([x.shape[0]])
    denoised_1, denoised_2 = None, None
    h, h_1, h_2 = None, None, None
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                x = x + (alpha_t * phi_2) * (denoised - denoised_1) / (h_1 / h)
            if eta > 0 and s_noise > 0:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() \
                    * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(3M) SDE, Brownian-tree noise on CPU."""
    return _sample_dpmpp_3m_sde(model, x, sigmas, extra_args, callback, disable)


def sample_dpmpp_3m_sde_gpu(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(3M) SDE, Brownian tree on the latent's device."""
    return _sample_dpmpp_3m_sde(model, x, sigmas, extra_args, callback, disable, cpu=False)


def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DDPM ancestral steps (Ho et al. 2020) in variance-preserving space."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed"))
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, x, i, sigma, denoised)
        eps = (x - denoised) / sigma
        x_vp = x / torch.sqrt(1.0 + sigma ** 2.0)
        alpha_cumprod = 1 / (sigma * sigma + 1)
        alpha_cumprod_prev = 1 / (sigma_prev * sigma_prev + 1)
        alpha = alpha_cumprod / alpha_cumprod_prev
        x = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - alpha_cumprod).sqrt())
        if sigma_prev > 0:
            x = x + ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt() \
                * noise_sampler(sigma, sigma_prev)
            x = x * torch.sqrt(1.0 + sigma_prev ** 2.0)
    return x


def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Latent Consistency Model sampling: jump to x0, re-noise to the next sigma."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed"))
    ms = _model_sampling(model)
    s_in = x.new_ones([x.shape[0]])
    for i in _steps(sigmas, disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1])
            x = ms.noise_scaling(sigmas[i + 1], noise, x) if ms is not None else x + noise * sigmas[i + 1]
    return x


def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """ComfyUI's "ddim": Euler steps (its seed+1 inpaint noise only matters with a denoise mask)."""
    return sample_euler(model, x, sigmas, extra_args, callback, disable)


def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """Improved PNDM (Zhang & Chen 2022, DEIS paper): Adams-Bashforth on dx/dsigma up to order 4."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    history: list[torch.Tensor] = []
    for i in _steps(sigmas, disable):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in, **extra_args)
        _report(callback, x, i, t_cur, denoised)
        d = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (t_next - t_cur) * d
        elif order == 2:
            x_next = x + (t_next - t_cur) * (3 * d - history[-1]) / 2
        elif order == 3:
            x_next = x + (t_next - t_cur) * (23 * d - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            x_next = x + (t_next - t_cur) * (55 * d - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history = (history + [d])[-(max_order - 1):]
        x = x_next
    return x


def get_sampler(name: str) -> Sampler:
    """The sampler function for a ComfyUI sampler name, with a did-you-mean error for unknown names."""
    from .unipc import sample_uni_pc, sample_uni_pc_bh2

    table = {n[len("sample_"):]: f for n, f in globals().items() if n.startswith("sample_") and callable(f)}
    table.update(uni_pc=sample_uni_pc, uni_pc_bh2=sample_uni_pc_bh2)
    if name in table:
        return table[name]
    import difflib

    close = difflib.get_close_matches(str(name), list(table), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown sampler {name!r}{hint}; implemented: {sorted(table)}")


def implemented_samplers() -> list[str]:
    """Names get_sampler accepts."""
    names = [n[len("sample_"):] for n, f in globals().items() if n.startswith("sample_") and callable(f)]
    return names + ["uni_pc", "uni_pc_bh2"]


