"""Analytic stand-ins for the diffusion model: data ~ N(mu, s^2) per element, so the exact x0 is known."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from comfykit.engine.models.family import ModelInputs  # noqa: E402
from comfykit.engine.sampling.latent_formats import SD15  # noqa: E402
from comfykit.engine.sampling.schedulers import ModelSamplingDiscrete  # noqa: E402

MU, S = 0.5, 0.5


def gaussian_denoiser(x, sigma, mu=MU, s=S):
    """The exact posterior mean E[x0 | x0 + sigma*eps = x] for x0 ~ N(mu, s^2)."""
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return (s ** 2 * x + sigma ** 2 * mu) / (s ** 2 + sigma ** 2)


class CountingDenoiser:
    """k-diffusion level model: exact Gaussian denoiser that counts its evaluations."""

    def __init__(self, model_sampling=None):
        self.calls = 0
        self.model_sampling = model_sampling

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        denoised = gaussian_denoiser(x, sigma)
        post = (extra_args.get("model_options") or {}).get("post_cfg_function")
        if post is not None:  # no guidance here: cond and uncond predictions coincide
            denoised = post({"denoised": denoised, "cond_denoised": denoised, "uncond_denoised": denoised})
        return denoised


class FakeUNet:
    """A DiffusionModel stand-in (eps prediction): its target mean is the mean of the context it is given.

    It records every call's batch size, context length, y and timesteps.
    """

    arch = "sd1"
    prediction = "eps"
    latent_format = SD15
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, s=S):
        self.s = s
        self.table = ModelSamplingDiscrete()
        self.calls = []

    def model_inputs(self, cond, options, x):
        """The sampling contract of DiffusionModel: this fake reads only the context."""
        return ModelInputs(context=cond)

    def apply(self, x, timesteps, inputs):
        return self(x, timesteps, inputs.context, y=inputs.pooled)

    def __call__(self, x, timesteps, context, y=None):
        self.calls.append({"batch": x.shape[0], "tokens": context.shape[1], "y": y, "t": timesteps.clone(),
                           "shape": tuple(x.shape)})
        sigma = self.table.sigmas[timesteps.long()].reshape(-1, 1, 1, 1)
        mu = context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        x_ve = x * (sigma ** 2 + 1) ** 0.5
        denoised = (self.s ** 2 * x_ve + sigma ** 2 * mu) / (self.s ** 2 + sigma ** 2)
        return (x_ve - denoised) / sigma


def cond(value, tokens=77, **opts):
    """A one-entry conditioning list whose context is filled with `value` (the FakeUNet's target mean)."""
    return [[torch.full((1, tokens, 8), float(value)), dict(opts)]]


@pytest.fixture
def fake_unet():
    return FakeUNet()
