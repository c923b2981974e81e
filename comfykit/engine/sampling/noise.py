"""Step noise for the samplers: one seeded generator (ancestral samplers) or a Brownian tree (SDE samplers)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


def default_noise_sampler(x: torch.Tensor, seed: int | None = None) -> Callable:
    """Fresh Gaussian noise like x from one generator on x's device, seeded with the sampling seed."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device,
                                                 generator=generator)


class BrownianTreeNoiseSampler:
    """Noise from a seeded torchsde Brownian tree, so SDE samplers converge as the step count grows."""

    def __init__(self, x: torch.Tensor, sigma_min: torch.Tensor, sigma_max: torch.Tensor,
                 seed: int | None = None, cpu: bool = True):
        import torchsde

        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self.sign = 1 if t0 < t1 else -1
        t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
        if seed is None:
            seed = int(torch.randint(0, 2 ** 63 - 1, []).item())
        self.cpu = cpu
        w0 = torch.zeros_like(x)
        if cpu:
            t0, t1, w0 = t0.cpu(), t1.cpu(), w0.cpu()
        self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=seed)

    @classmethod
    def for_sigmas(cls, x: torch.Tensor, sigmas: torch.Tensor, seed: int | None, cpu: bool = True):
        """A tree spanning the positive sigmas of a schedule (ComfyUI's SDE samplers)."""
        return cls(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seed, cpu=cpu)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        s0, s1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        t0, t1, sign = (s0, s1, 1) if s0 < s1 else (s1, s0, -1)
        with warnings.catch_warnings():
            # torchsde compares float32 sigma bounds with themselves in float64 and warns spuriously
            warnings.filterwarnings("ignore", message="Should have t[ab]")
            if self.cpu:
                w = self.tree(t0.cpu().float(), t1.cpu().float()).to(t0.dtype).to(t0.device)
            else:
                w = self.tree(t0, t1)
        return w * (self.sign * sign) / (s1 - s0).abs().sqrt()
