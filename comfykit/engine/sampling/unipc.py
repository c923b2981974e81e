"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), multistep, data prediction.

ComfyUI's "uni_pc" (B(h) = h, "bh1") and "uni_pc_bh2" (B(h) = e^h - 1). Works in variance-preserving space
with sigma as the time variable: alpha = 1/sqrt(1+sigma^2), std = sigma*alpha, lambda = -log sigma.
"""

from __future__ import annotations

import torch


def _alpha(sigma: torch.Tensor) -> torch.Tensor:
    return (1.0 / (sigma * sigma + 1.0)).sqrt()


def _uni_pc_update(model_fn, x, model_prev, t_prev, t, order, use_corrector, variant):
    """One UniPC step from t_prev[-1] to t of the given order: predictor, then (optionally) corrector."""
    lambda_prev_0, lambda_t = t_prev[-1].log().neg(), t.log().neg()
    model_prev_0 = model_prev[-1]
    sigma_prev_0, sigma_t = t_prev[-1] * _alpha(t_prev[-1]), t * _alpha(t)
    alpha_t = _alpha(t)
    h = lambda_t - lambda_prev_0

    rks, d1s = [], []
    for i in range(1, order):
        rk = (t_prev[-(i + 1)].log().neg() - lambda_prev_0) / h
        rks.append(rk)
        d1s.append((model_prev[-(i + 1)] - model_prev_0) / rk)
    rks = torch.stack(rks + [torch.ones_like(h)]) if rks else torch.ones(1, dtype=h.dtype, device=h.device)

    hh = -h  # data prediction
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    big_r, b = torch.stack(rows), torch.stack(b)

    d1s_t = torch.stack(d1s, dim=1) if d1s else None
    x_t_ = sigma_t / sigma_prev_0 * x - alpha_t * h_phi_1 * model_prev_0
    if d1s_t is not None:
        rhos_p = torch.tensor([0.5], dtype=b.dtype, device=b.device) if order == 2 else \
            torch.linalg.solve(big_r[:-1, :-1], b[:-1])
        pred_res = torch.tensordot(d1s_t, rhos_p.to(d1s_t.dtype), dims=([1], [0]))
    else:
        pred_res = 0
    x_t = x_t_ - alpha_t * b_h * pred_res

    model_t = None
    if use_corrector:
        rhos_c = torch.tensor([0.5], dtype=b.dtype, device=b.device) if order == 1 else torch.linalg.solve(big_r, b)
        model_t = model_fn(x_t, t)
        corr_res = torch.tensordot(d1s_t, rhos_c[:-1].to(d1s_t.dtype), dims=([1], [0])) if d1s_t is not None else 0
        x_t = x_t_ - alpha_t * b_h * (corr_res + rhos_c[-1] * (model_t - model_prev_0))
    return x_t, model_t


def _sample_unipc(model, x, sigmas, extra_args=None, callback=None, disable=None, variant="bh1"):
    extra_args = {} if extra_args is None else extra_args
    timesteps = sigmas.clone()
    if timesteps[-1] == 0:
        timesteps[-1] = 0.001  # as ComfyUI: UniPC cannot reach sigma 0, it stops just above it
    s_in = x.new_ones([x.shape[0]])

    def model_fn(x_vp, t):
        # denoised x0 at the VE point x_vp / alpha(t)
        return model(x_vp / _alpha(t), t * s_in, **extra_args)

    steps = len(timesteps) - 1
    order = min(3, len(timesteps) - 2)
    x = x * _alpha(timesteps[0])
    model_prev, t_prev = [], []
    for step_index in range(steps):
        if step_index == 0:
            model_prev, t_prev = [model_fn(x, timesteps[0])], [timesteps[0]]
        elif step_index < order:
            t = timesteps[step_index]
            x, model_x = _uni_pc_update(model_fn, x, model_prev, t_prev, t, step_index, True, variant)
            model_prev.append(model_x if model_x is not None else model_fn(x, t))
            t_prev.append(t)
        else:
            last = step_index + (2 if step_index == steps - 1 else 1)  # the last index also takes the final step
            for step in range(step_index, last):
                t = timesteps[step]
                step_order = min(order, steps + 1 - step)  # lower order near the end
                x, model_x = _uni_pc_update(model_fn, x, model_prev, t_prev, t, step_order, step != steps, variant)
                model_prev, t_prev = model_prev[1:] + [model_prev[-1]], t_prev[1:] + [t]
                if step < steps:
                    model_prev[-1] = model_x if model_x is not None else model_fn(x, t)
        if callback is not None:
            callback({"x": x, "i": step_index, "sigma": sigmas[step_index], "sigma_hat": sigmas[step_index],
                      "denoised": model_prev[-1]})
    return x / _alpha(timesteps[-1])


def sample_uni_pc(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """UniPC multistep with B(h) = h (ComfyUI's "uni_pc")."""
    return _sample_unipc(model, x, sigmas, extra_args, callback, disable, variant="bh1")


def sample_uni_pc_bh2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """UniPC multistep with B(h) = e^h - 1 (ComfyUI's "uni_pc_bh2")."""
    return _sample_unipc(model, x, sigmas, extra_args, callback, disable, variant="bh2")
