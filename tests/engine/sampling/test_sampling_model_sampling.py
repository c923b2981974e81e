"""ModelSamplingFlux / SD3 / AuraFlow: the shifted flow sigma tables ComfyUI 0.3.64 samples with, on a MODEL clone."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from comfykit.engine.models.family import DiffusionModel  # noqa: E402
from comfykit.engine.models.sd import SD1  # noqa: E402
from comfykit.engine.models.unet import UNetConfig, UNetModel  # noqa: E402
from comfykit.engine.sampling.schedulers import (  # noqa: E402
    ModelSamplingDiscrete,
    calculate_sigmas,
    flux_shift,
    model_sampling_for,
)
from comfykit.nodes.flux_sd3 import ModelSamplingAuraFlow, ModelSamplingFlux, ModelSamplingSD3  # noqa: E402


@pytest.fixture(scope="module")
def model():
    config = UNetConfig(model_channels=32, channel_mult=(1,), num_res_blocks=(1,), transformer_depth=(1,),
                        context_dim=32, use_linear=False)
    return DiffusionModel(UNetModel(config), SD1(), config, ModelSamplingDiscrete())


def _flux_sigma(shift, t):
    return math.exp(shift) / (math.exp(shift) + (1 / t - 1))


def _sd3_sigma(shift, t):
    return shift * t / (1 + (shift - 1) * t)


def test_model_sampling_flux_at_1024_is_flux_default_shift(model):
    patched = ModelSamplingFlux().patch(model, 1.15, 0.5, 1024, 1024)[0]
    ms = model_sampling_for(patched)
    assert ms.shift == pytest.approx(1.15, abs=1e-12)
    # ComfyUI's verified Flux "simple" table for 10 steps
    assert calculate_sigmas(ms, "simple", 10).tolist() == pytest.approx(
        [1.0, .966, .9266, .8805, .8257, .7595, .678, .5751, .4412, .2598, 0], abs=1e-4)


@pytest.mark.parametrize("width,height,shift", [(512, 512, 0.63), (1024, 768, 0.97666667), (256, 256, 0.5),
                                                (2048, 1024, 1.8433333)])
def test_model_sampling_flux_shift_follows_the_image_size(model, width, height, shift):
    assert flux_shift(width, height) == pytest.approx(shift, abs=1e-6)
    ms = model_sampling_for(ModelSamplingFlux().patch(model, 1.15, 0.5, width, height)[0])
    assert ms.shift == pytest.approx(shift, abs=1e-6)
    table = ms.sigmas
    assert len(table) == 10000
    for k in (0, 99, 4999, 9998, 9999):
        assert float(table[k]) == pytest.approx(_flux_sigma(shift, (k + 1) / 10000), abs=1e-6)
    simple = calculate_sigmas(ms, "simple", 10)
    assert simple.tolist() == pytest.approx([_flux_sigma(shift, 1 - i / 10) for i in range(10)] + [0.0], abs=1e-4)


def test_model_sampling_flux_numbers_checked_by_hand(model):
    # shift 0.63 at 512x512; e^0.63 = 1.87761: sigma(0.5) = 1.87761 / 2.87761, sigma(0.1) = 1.87761 / 10.87761
    ms = model_sampling_for(ModelSamplingFlux().patch(model, 1.15, 0.5, 512, 512)[0])
    simple = calculate_sigmas(ms, "simple", 10)
    assert float(simple[1]) == pytest.approx(0.944129, abs=1e-5)
    assert float(simple[5]) == pytest.approx(0.652489, abs=1e-5)
    assert float(simple[9]) == pytest.approx(0.172612, abs=1e-5)
    assert float(ms.timestep(torch.tensor(0.5))) == 0.5  # Flux's timestep is sigma itself
    assert ms.percent_to_sigma(0.5) == pytest.approx(0.652489, abs=1e-5)


def test_model_sampling_sd3(model):
    ms = model_sampling_for(ModelSamplingSD3().patch(model, 3.0)[0])
    assert ms.prediction == "flow" and len(ms.sigmas) == 1000
    assert calculate_sigmas(ms, "simple", 10).tolist() == pytest.approx(
        [1.0, .9643, .9231, .875, .8182, .75, .6667, .5625, .4286, .25, 0], abs=1e-4)  # ComfyUI's verified table
    six = model_sampling_for(ModelSamplingSD3().patch(model, 6.0)[0])
    assert float(six.sigma(torch.tensor(250.0))) == pytest.approx(2 / 3, abs=1e-6)  # 6*0.25 / (1 + 5*0.25)
    assert float(six.timestep(torch.tensor(0.5))) == pytest.approx(500.0)
    assert calculate_sigmas(six, "simple", 8).tolist() == pytest.approx(
        [_sd3_sigma(6.0, 1 - i / 8) for i in range(8)] + [0.0], abs=1e-4)
    assert six.percent_to_sigma(0.75) == pytest.approx(_sd3_sigma(6.0, 0.25), abs=1e-6)


def test_model_sampling_aura_flow(model):
    ms = model_sampling_for(ModelSamplingAuraFlow().patch_aura(model, 1.73)[0])
    # the same sigmas as SD3's schedule with that shift, but timesteps in 0..1 (multiplier 1)
    sd3 = model_sampling_for(ModelSamplingSD3().patch(model, 1.73)[0])
    assert torch.allclose(ms.sigmas, sd3.sigmas, atol=1e-6)
    assert float(ms.sigmas[499]) == pytest.approx(0.633700, abs=1e-5)  # 1.73*0.5 / (1 + 0.73*0.5)
    assert float(ms.timestep(torch.tensor(0.5))) == pytest.approx(0.5)
    assert float(ms.sigma(torch.tensor(0.5))) == pytest.approx(0.633700, abs=1e-5)


def test_patched_model_is_a_clone_sharing_the_weights(model):
    before = model.model_sampling
    patched = ModelSamplingSD3().patch(model, 3.0)[0]
    assert patched is not model and patched.network is model.network
    assert model.model_sampling is before and model.prediction == "eps"
    assert patched.prediction == "flow"
    twice = ModelSamplingFlux().patch(patched, 1.15, 0.5, 512, 512)[0]  # the last patch wins, as in ComfyUI
    assert model_sampling_for(twice).shift == pytest.approx(0.63)
    with pytest.raises(ValueError, match="must be a MODEL"):
        ModelSamplingSD3().patch("not a model", 3.0)
