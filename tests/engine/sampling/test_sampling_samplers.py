"""Every sampler on an analytic Gaussian-data denoiser: convergence, model-call counts, seeded noise."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import MU, CountingDenoiser, S  # noqa: E402

from comfykit.engine.sampling import samplers  # noqa: E402
from comfykit.engine.sampling.ksampler import prepare_noise, select_sigmas  # noqa: E402
from comfykit.engine.sampling.schedulers import ModelSamplingDiscrete  # noqa: E402

SD15 = ModelSamplingDiscrete()
STOCHASTIC = {"euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu",
              "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde",
              "dpmpp_3m_sde_gpu", "ddpm", "lcm"}
ALL = samplers.implemented_samplers()
# the *_gpu variants differ only in where the Brownian tree lives, which is the CPU here
CONVERGENCE = [n for n in ALL if not n.endswith("_gpu") or n == "dpmpp_2m_sde_gpu"]


def _start(seed=0, shape=(1, 4, 16, 16)):
    z = prepare_noise(torch.zeros(shape), seed)
    sigma_max = float(SD15.sigma_max)
    # the exact ODE maps x_T = mu + sqrt(s^2 + sigma^2) z to the data sample mu + s z
    return z, MU + (S ** 2 + sigma_max ** 2) ** 0.5 * z


def _run(name, steps=20, scheduler="karras", seed=0):
    z, x = _start(seed)
    sigmas = select_sigmas(SD15, name, scheduler, steps)
    model = CountingDenoiser(SD15)
    out = samplers.get_sampler(name)(model, x, sigmas, extra_args={"seed": seed})
    return z, out, model.calls


def test_builtin_sampler_names_are_all_implemented():
    from comfykit.graph.builtin import SAMPLER_NAMES

    assert set(SAMPLER_NAMES) <= set(ALL)


@pytest.mark.parametrize("name", sorted(set(CONVERGENCE) - STOCHASTIC))
def test_deterministic_sampler_reaches_the_exact_ode_solution(name):
    z, out, _ = _run(name, steps=40)
    assert torch.isfinite(out).all()
    exact = MU + S * z
    assert (out - exact).abs().mean() < 0.03, name


@pytest.mark.parametrize("name", sorted(STOCHASTIC & set(CONVERGENCE)))
def test_stochastic_sampler_produces_the_data_distribution(name):
    _, out, _ = _run(name, steps=40)
    assert torch.isfinite(out).all()
    assert float(out.mean()) == pytest.approx(MU, abs=0.05), name
    if name != "lcm":  # LCM jumps to the posterior mean each step, which shrinks the spread of a non-LCM model
        assert float(out.std()) == pytest.approx(S, abs=0.06), name


@pytest.mark.parametrize("name, expected", [
    ("euler", 10), ("ddim", 10), ("euler_ancestral", 10), ("lms", 10), ("dpmpp_2m", 10), ("dpmpp_2m_sde", 10),
    ("dpmpp_3m_sde", 10), ("ddpm", 10), ("lcm", 10), ("ipndm", 10), ("euler_cfg_pp", 10),
    ("heun", 19),  # 2 per step, 1 on the last
    ("dpm_2", 19), ("dpm_2_ancestral", 19),  # 10 steps after the penultimate sigma is dropped
    ("dpmpp_2s_ancestral", 19), ("dpmpp_sde", 19),
    ("heunpp2", 27),  # 3 per step, 2 on the second-to-last, 1 on the last
    ("uni_pc", 10), ("uni_pc_bh2", 10),
])
def test_model_calls_per_sampler(name, expected):
    _, _, calls = _run(name, steps=10)
    assert calls == expected


def test_euler_step_by_hand():
    x = torch.full((1, 1, 1, 1), 3.0)
    sigmas = torch.tensor([2.0, 1.0, 0.0])
    seen = []
    out = samplers.sample_euler(CountingDenoiser(), x, sigmas, callback=seen.append)
    # step 1: D = (0.25*3 + 4*0.5)/4.25, d = (3 - D)/2, x1 = 3 - d
    d0 = (0.25 * 3 + 4 * 0.5) / 4.25
    x1 = 3 - (3 - d0) / 2
    d1 = (0.25 * x1 + 0.5) / 1.25
    assert float(out) == pytest.approx(d1, rel=1e-6)  # the last step to sigma 0 lands on the denoised value
    assert [s["i"] for s in seen] == [0, 1]
    assert float(seen[0]["denoised"]) == pytest.approx(d0, rel=1e-6)


def test_ancestral_noise_is_seeded_and_starts_like_the_initial_noise():
    _, a, _ = _run("euler_ancestral", steps=5, seed=7)
    _, b, _ = _run("euler_ancestral", steps=5, seed=7)
    _, c, _ = _run("euler_ancestral", steps=5, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    x = torch.zeros(1, 4, 8, 8)
    first = samplers.default_noise_sampler(x, seed=3)(None, None)
    assert torch.equal(first, prepare_noise(x, 3))  # on CPU the step noise continues the same sequence


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde"])
def test_sde_noise_is_seeded(name):
    _, a, _ = _run(name, steps=5, seed=1)
    _, b, _ = _run(name, steps=5, seed=1)
    _, c, _ = _run(name, steps=5, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_sampler_names_the_closest():
    with pytest.raises(ValueError, match="did you mean 'euler_ancestral'"):
        samplers.get_sampler("euler_ancestrall")


@pytest.mark.parametrize("name, gain", [
    ("heun", 10), ("dpm_2", 10), ("lms", 10), ("dpmpp_2m", 10), ("ipndm", 10),
    ("uni_pc", 16), ("uni_pc_bh2", 16),  # UniPC ends at sigma 0.001 with a first-order step, so compare 8 -> 16
    ("euler", 3),
])
def test_higher_order_samplers_converge_faster(name, gain):
    """Quadrupling the steps cuts a second-order sampler's error by well over 4x (Euler: about 4x)."""
    def error(steps):
        z, out, _ = _run(name, steps=steps)
        return float((out - (MU + S * z)).abs().mean())

    coarse, fine = (error(8), error(16)) if name.startswith("uni_pc") else (error(8), error(32))
    assert fine < coarse / gain, (coarse, fine)


class FlowDenoiser:
    """Exact x0 for Gaussian data under rectified flow, x = (1 - sigma) x0 + sigma noise (SD3/Flux)."""

    def __init__(self):
        from comfykit.engine.sampling.schedulers import ModelSamplingDiscreteFlow

        self.model_sampling = ModelSamplingDiscreteFlow(shift=3.0)

    def __call__(self, x, sigma, **extra_args):
        s = sigma.reshape(-1, 1, 1, 1)
        a = 1 - s
        return MU + a * S ** 2 * (x - a * MU) / (a ** 2 * S ** 2 + s ** 2)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "euler_ancestral", "dpmpp_2s_ancestral",
                                  "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_flow_models_sample_the_data_distribution(name):
    from comfykit.engine.sampling.schedulers import calculate_sigmas

    model = FlowDenoiser()
    x = prepare_noise(torch.zeros(1, 4, 16, 16), 0)  # sigma_max is 1: pure noise
    out = samplers.get_sampler(name)(model, x, calculate_sigmas(model.model_sampling, "simple", 30),
                                     extra_args={"seed": 0})
    assert float(out.mean()) == pytest.approx(MU, abs=0.06), name
    assert float(out.std()) == pytest.approx(S, abs=0.1), name
