"""Sigma tables and model_sampling math against ComfyUI 0.3.64's verified numbers."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from comfykit.engine.sampling.ksampler import select_sigmas  # noqa: E402
from comfykit.engine.sampling.schedulers import (  # noqa: E402
    SCHEDULER_NAMES,
    ModelSamplingDiscrete,
    ModelSamplingDiscreteFlow,
    ModelSamplingFlux,
    calculate_sigmas,
)

SD15 = ModelSamplingDiscrete()


def test_sd15_sigma_range():
    assert float(SD15.sigma_min) == pytest.approx(0.0291671585, abs=1e-7)
    assert float(SD15.sigma_max) == pytest.approx(14.6146411896, abs=1e-5)


def test_every_scheduler_matches_golden_table(reference_dir):
    golden = json.loads((reference_dir / "sigmas_sd15_20.json").read_text())
    assert set(golden) == set(SCHEDULER_NAMES)
    for name, expected in golden.items():
        sigmas = calculate_sigmas(SD15, name, 20)
        assert sigmas.dtype == torch.float32
        assert sigmas.tolist() == pytest.approx(expected, abs=1e-4), name


def test_denoise_half_takes_the_tail_of_a_longer_schedule():
    expected = [1.5482, 1.4225, 1.3078, 1.2026, 1.1056, 1.0158, 0.9324, 0.8543, 0.7811, 0.7119, 0.6462, 0.5834,
                0.5230, 0.4644, 0.4069, 0.3495, 0.2909, 0.2287, 0.1567, 0.0292, 0]
    sigmas = select_sigmas(SD15, "euler", "normal", 20, denoise=0.5)
    assert sigmas.tolist() == pytest.approx(expected, abs=1e-4)


def test_timesteps_fed_to_the_unet():
    def timesteps(name):
        return [int(SD15.timestep(s)) for s in calculate_sigmas(SD15, name, 20)[:-1]]

    assert timesteps("normal") == [999, 946, 894, 841, 789, 736, 684, 631, 578, 526, 473, 421, 368, 315, 263, 210,
                                   158, 105, 53, 0]
    assert timesteps("karras") == [999, 962, 921, 876, 827, 772, 710, 640, 561, 474, 380, 285, 197, 123, 69, 35,
                                   15, 6, 2, 0]
    assert timesteps("simple") == list(range(999, 0, -50))
    sgm = timesteps("sgm_uniform")
    assert sgm[:2] == [999, 949] and sgm[9:12] == [549, 500, 450] and sgm[-1] == 50


def test_sigma_interpolates_log_linearly_between_table_entries():
    lo, hi = SD15.sigmas[10].log(), SD15.sigmas[11].log()
    assert float(SD15.sigma(torch.tensor(10.25))) == pytest.approx(float((0.75 * lo + 0.25 * hi).exp()), rel=1e-6)
    assert int(SD15.timestep(SD15.sigmas[123])) == 123


def test_flow_schedules():
    sd3 = calculate_sigmas(ModelSamplingDiscreteFlow(shift=3.0), "simple", 10)
    assert sd3.tolist() == pytest.approx([1.0, .9643, .9231, .875, .8182, .75, .6667, .5625, .4286, .25, 0], abs=1e-4)
    flux = calculate_sigmas(ModelSamplingFlux(shift=1.15), "simple", 10)
    assert flux.tolist() == pytest.approx([1.0, .966, .9266, .8805, .8257, .7595, .678, .5751, .4412, .2598, 0],
                                          abs=1e-4)


def test_unknown_scheduler_names_the_closest():
    with pytest.raises(ValueError, match="did you mean 'karras'"):
        calculate_sigmas(SD15, "karas", 20)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        calculate_sigmas(SD15, "normal", 0)


def test_discard_penultimate_sigma_samplers():
    sigmas = select_sigmas(SD15, "dpm_2", "karras", 10)
    longer = calculate_sigmas(SD15, "karras", 11)
    assert len(sigmas) == 11
    assert sigmas.tolist() == torch.cat([longer[:-2], longer[-1:]]).tolist()
    assert len(select_sigmas(SD15, "euler", "karras", 10)) == 11


def test_advanced_start_and_last_step():
    full = calculate_sigmas(SD15, "normal", 20)
    tail = select_sigmas(SD15, "euler", "normal", 20, start_step=12)
    assert tail.tolist() == full[12:].tolist()
    head = select_sigmas(SD15, "euler", "normal", 20, last_step=5)
    assert head.tolist() == full[:6].tolist()
    forced = select_sigmas(SD15, "euler", "normal", 20, last_step=5, force_full_denoise=True)
    assert forced[:-1].tolist() == full[:5].tolist() and float(forced[-1]) == 0.0
    assert full[5] != 0  # the forced copy did not change the cached schedule
    assert select_sigmas(SD15, "euler", "normal", 20, start_step=20) is None
    assert select_sigmas(SD15, "euler", "normal", 20, denoise=0.0) is None


def test_eps_and_v_prediction_math():
    x, out = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    sigma = torch.tensor([2.0, 0.5])
    s = sigma.reshape(-1, 1, 1, 1)
    assert torch.allclose(SD15.calculate_input(sigma, x), x / (s ** 2 + 1).sqrt())
    assert torch.allclose(SD15.calculate_denoised(sigma, out, x), x - out * s)
    v = ModelSamplingDiscrete("v")
    assert torch.allclose(v.calculate_denoised(sigma, out, x), x / (s ** 2 + 1) - out * s / (s ** 2 + 1).sqrt())
    noise, latent = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    sig = torch.tensor(3.0)
    assert torch.allclose(SD15.noise_scaling(sig, noise, latent, max_denoise=True), noise * 10 ** 0.5 + latent)
    assert torch.allclose(SD15.noise_scaling(sig, noise, latent, max_denoise=False), noise * 3 + latent)


def test_zero_terminal_snr_reaches_a_huge_final_sigma():
    zsnr = ModelSamplingDiscrete(zsnr=True)
    assert float(zsnr.sigma_max) > 4000
    assert float(zsnr.sigma_min) == pytest.approx(float(SD15.sigma_min), rel=1e-3)
