"""The custom-sampling parts on the analytic fake UNet: guiders (CFG, Basic, DualCFG), NOISE, SAMPLER, SIGMAS
nodes and sample_latent's two outputs."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from conftest import FakeUNet, cond  # noqa: E402

from comfykit.engine.sampling import guiders  # noqa: E402
from comfykit.engine.sampling.ksampler import (  # noqa: E402
    DisabledNoise,
    RandomNoise,
    Sampler,
    common_ksampler,
    prepare_noise,
    sample_latent,
    select_sigmas,
)
from comfykit.engine.sampling.schedulers import ModelSamplingDiscrete, calculate_sigmas  # noqa: E402
from comfykit.nodes import custom_sampling as nodes  # noqa: E402

SD15 = ModelSamplingDiscrete()


def _latent(fill=0.0, h=8, w=8):
    return {"samples": torch.full((1, 4, h, w), fill)}


class RecordingUNet(FakeUNet):
    """The fake UNet, also recording the options each conditioning entry reaches the model with."""

    def __init__(self):
        super().__init__()
        self.options = []

    def model_inputs(self, cond, options, x):
        self.options.append(dict(options))
        return super().model_inputs(cond, options, x)


def test_custom_advanced_is_ksampler():
    for sampler, scheduler, cfg in [("euler_ancestral", "karras", 5.0), ("dpmpp_2m", "normal", 1.0)]:
        want = common_ksampler(FakeUNet(), 11, 4, cfg, sampler, scheduler, cond(1.0), cond(-1.0), _latent())
        model = FakeUNet()
        sigmas = nodes.BasicScheduler().get_sigmas(model, scheduler, 4, 1.0)[0]
        out, _ = sample_latent(guiders.CFGGuider(model, cond(1.0), cond(-1.0), cfg), Sampler.named(sampler), sigmas,
                               _latent(), RandomNoise(11))
        assert torch.equal(out["samples"], want["samples"]), sampler


def test_denoised_output_is_the_last_x0_and_leftover_noise_stays_in_output():
    model, seen = FakeUNet(), []
    sigmas = calculate_sigmas(SD15, "karras", 6)[:4]  # stop at a sigma > 0, like return_with_leftover_noise
    out, denoised = sample_latent(guiders.CFGGuider(model, cond(1.0), cond(0.0), 3.0), Sampler.named("euler"),
                                  sigmas, _latent(), RandomNoise(2), callback=lambda *a: seen.append(a[2]))
    assert torch.equal(denoised["samples"], seen[-1] / 0.18215)  # model space -> raw latent
    assert float((out["samples"] - denoised["samples"]).abs().mean()) > 0.1
    empty, empty_denoised = sample_latent(guiders.CFGGuider(model, cond(1.0), cond(0.0), 3.0),
                                          Sampler.named("euler"), torch.FloatTensor([]), _latent(0.2), RandomNoise(2))
    assert empty is empty_denoised and torch.equal(empty["samples"], _latent(0.2)["samples"])


def test_noise_objects():
    latent = {"samples": torch.zeros(3, 4, 8, 8), "batch_index": [2, 0, 1]}
    assert torch.equal(RandomNoise(7).generate_noise(latent), prepare_noise(latent["samples"], 7, [2, 0, 1]))
    assert RandomNoise(7).seed == 7 and DisabledNoise().seed == 0
    zeros = DisabledNoise().generate_noise(latent)
    assert zeros.shape == (3, 4, 8, 8) and not zeros.any() and zeros.device.type == "cpu"


def test_disabled_noise_still_seeds_the_step_noise():
    """SamplerCustom passes noise_seed to the samplers even with add_noise off, as ComfyUI does."""
    node = nodes.SamplerCustom()
    node.engine = type("E", (), {"call_with": staticmethod(lambda fn, *m: fn()),
                                 "sampler_callback": staticmethod(lambda node, model: lambda *step: None)})()
    sigmas = calculate_sigmas(SD15, "normal", 3)
    runs = [node.sample(FakeUNet(), False, seed, 4.0, cond(1.0), cond(0.0), Sampler.named("euler_ancestral"),
                        sigmas, _latent(0.3))[0]["samples"] for seed in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_basic_guider_is_cfg_one_on_the_positive_alone():
    model = FakeUNet()
    out = sample_latent(guiders.BasicGuider(model, cond(1.5)), Sampler.named("euler"),
                        calculate_sigmas(SD15, "normal", 3), _latent(), RandomNoise(0))[0]
    assert [c["batch"] for c in model.calls] == [1, 1, 1]
    want = common_ksampler(FakeUNet(), 0, 3, 1.0, "euler", "normal", cond(1.5), cond(0.0), _latent())
    assert torch.equal(out["samples"], want["samples"])
    with pytest.raises(ValueError, match="positive conditioning is empty"):
        guiders.BasicGuider(model, [])


def _single(value, x, sigma):
    return guiders.CFGDenoiser(FakeUNet(), SD15, cond(value), None, 1.0)(x, sigma)


@pytest.mark.parametrize("style", ["regular", "nested"])
def test_dual_cfg_formula(style):
    x, sigma = torch.randn(1, 4, 8, 8) * 2, torch.tensor([2.0])
    guider = nodes.DualCFGGuider().get_guider(FakeUNet(), cond(2.0), cond(1.0), cond(-1.0), 3.0, 5.0, style)[0]
    got = guider.denoiser(SD15)(x, sigma)
    pos, mid, neg = _single(2.0, x, sigma), _single(1.0, x, sigma), _single(-1.0, x, sigma)
    if style == "regular":
        want = neg + (mid - neg) * 5.0 + (pos - mid) * 3.0
    else:
        want = neg + 5.0 * ((mid + (pos - mid) * 3.0) - neg)
    assert torch.allclose(got, want, atol=1e-5)


def test_dual_cfg_skips_the_predictions_cfg_one_makes_unused():
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([2.0])
    for cfg1, cfg2, batch in [(3.0, 5.0, 3), (3.0, 1.0, 2), (1.0, 1.0, 1)]:
        model = FakeUNet()
        guiders.DualCFGGuider(model, cond(2.0), cond(1.0), cond(-1.0), cfg1, cfg2).denoiser(SD15)(x, sigma)
        assert model.calls[0]["batch"] == batch, (cfg1, cfg2)
    model = FakeUNet()
    guiders.DualCFGGuider(model, cond(2.0), cond(1.0), cond(-1.0), 1.0, 1.0).denoiser(SD15)(
        x, sigma, model_options={"disable_cfg1_optimization": True})
    assert model.calls[0]["batch"] == 3


def test_prompt_types_reach_the_model():
    """cond2 of DualCFGGuider is a negative prompt to the model (the SDXL refiner scores it 2.5)."""
    model = RecordingUNet()
    x, sigma = torch.zeros(1, 4, 8, 8), torch.tensor([1.0])
    guiders.DualCFGGuider(model, cond(2.0), cond(1.0), cond(-1.0), 3.0, 5.0).denoiser(SD15)(x, sigma)
    assert [o["prompt_type"] for o in model.options] == ["negative", "negative", "positive"]
    model = RecordingUNet()
    guiders.CFGGuider(model, cond(1.0, prompt_type="custom"), cond(0.0), 2.0).denoiser(SD15)(x, sigma)
    assert [o["prompt_type"] for o in model.options] == ["custom", "negative"]


def test_the_run_latent_and_noise_mask_reach_the_model_inputs():
    model = RecordingUNet()
    latent = _latent(0.5)
    latent["noise_mask"] = torch.ones(1, 8, 8)
    sample_latent(guiders.CFGGuider(model, cond(1.0, area=(4, 4, 0, 0)), cond(0.0), 2.0), Sampler.named("euler"),
                  calculate_sigmas(SD15, "normal", 1), latent, RandomNoise(0))
    opts = model.options[0]
    assert torch.allclose(opts["latent_image"], latent["samples"] * 0.18215)  # in model space
    assert opts["denoise_mask"].shape == (1, 4, 8, 8) and opts["area"] == (4, 4, 0, 0)


def test_sampler_select_and_its_errors():
    sampler = nodes.KSamplerSelect().get_sampler("ddim")[0]
    assert sampler.name == "ddim" and sampler.inpaint_options == {"random": True}
    assert Sampler.named("euler").inpaint_options == {}
    with pytest.raises(ValueError, match="did you mean 'euler'"):
        Sampler.named("eulr")


def test_basic_scheduler_denoise():
    model = FakeUNet()
    full = nodes.BasicScheduler().get_sigmas(model, "karras", 10, 1.0)[0]
    assert torch.equal(full, calculate_sigmas(SD15, "karras", 10))
    half = nodes.BasicScheduler().get_sigmas(model, "normal", 10, 0.5)[0]
    assert torch.equal(half, calculate_sigmas(SD15, "normal", 20)[-11:])
    assert torch.equal(half, select_sigmas(SD15, "euler", "normal", 10, denoise=0.5))
    odd = nodes.BasicScheduler().get_sigmas(model, "normal", 10, 0.3)[0]  # int(10 / 0.3) = 33 steps, last 11
    assert torch.equal(odd, calculate_sigmas(SD15, "normal", 33)[-11:])
    assert nodes.BasicScheduler().get_sigmas(model, "normal", 10, 0.0)[0].numel() == 0


def test_sd_turbo_scheduler():
    model = FakeUNet()
    one = nodes.SDTurboScheduler().get_sigmas(model, 1, 1.0)[0]
    assert one.tolist() == pytest.approx([14.6146, 0.0], abs=1e-4)  # timestep 999 = SD1's sigma_max
    four = nodes.SDTurboScheduler().get_sigmas(model, 4, 1.0)[0]
    assert torch.allclose(four, torch.cat([SD15.sigmas[[999, 899, 799, 699]], torch.zeros(1)]))
    half = nodes.SDTurboScheduler().get_sigmas(model, 2, 0.5)[0]  # skips the first 5 of the 10 timesteps
    assert torch.allclose(half, torch.cat([SD15.sigmas[[499, 399]], torch.zeros(1)]))


def test_sigmas_from_a_list_run():
    """SIGMAS is any 1-D float sequence: a hand-made schedule runs."""
    out, _ = sample_latent(guiders.CFGGuider(FakeUNet(), cond(1.0), cond(0.0), 1.0), Sampler.named("euler"),
                           [14.6146, 3.0, 0.0], _latent(), RandomNoise(0))
    assert out["samples"].shape == (1, 4, 8, 8) and math.isfinite(float(out["samples"].abs().max()))
