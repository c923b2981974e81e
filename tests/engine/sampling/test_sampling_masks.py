"""Conditioning regions and masks in the denoiser, the conditioning mix nodes, and DifferentialDiffusion's hook."""

from __future__ import annotations

import copy
import logging

import pytest

torch = pytest.importorskip("torch")

from conftest import FakeUNet, cond  # noqa: E402

from comfykit.engine.sampling.guiders import CFGGuider  # noqa: E402
from comfykit.engine.sampling.ksampler import CFGDenoiser, RandomNoise, Sampler, sample_latent  # noqa: E402
from comfykit.engine.sampling.schedulers import ModelSamplingDiscrete  # noqa: E402
from comfykit.nodes.conditioning_mix import (  # noqa: E402
    ConditioningAverage,
    ConditioningConcat,
    ConditioningSetAreaPercentage,
    ConditioningSetAreaStrength,
    ConditioningSetMask,
)
from comfykit.nodes.differential_diffusion import DifferentialDiffusion, DifferentialMask  # noqa: E402

SD15 = ModelSamplingDiscrete()


def entry(value, tokens=3, pooled=None, width=8):
    return [torch.full((1, tokens, width), float(value)), {"pooled_output": pooled}]


def test_average_interpolates_tokens_and_pooled():
    to = [entry(1.0, pooled=torch.ones(1, 4))]
    (out,) = ConditioningAverage().addWeighted(to, [entry(3.0, tokens=5, pooled=torch.full((1, 4), 3.0))], 0.25)
    assert out[0][0].shape == (1, 3, 8) and out[0][0].unique().tolist() == [2.5]  # cut to conditioning_to's 3 tokens
    assert out[0][1]["pooled_output"].unique().tolist() == [2.5]
    (short,) = ConditioningAverage().addWeighted(to, [entry(3.0, tokens=2)], 0.25)
    assert short[0][0][0, :, 0].tolist() == [2.5, 2.5, 0.25]  # the missing token counts as zeros
    assert short[0][1]["pooled_output"].unique().tolist() == [1.0]  # no pooled output to mix with
    (taken,) = ConditioningAverage().addWeighted([entry(1.0)], [entry(3.0, pooled=torch.full((1, 4), 3.0))], 0.5)
    assert taken[0][1]["pooled_output"].unique().tolist() == [3.0]
    with pytest.raises(ValueError, match="ConditioningAverage: conditioning_to has 8-wide tokens but "
                                         "conditioning_from 16-wide"):
        ConditioningAverage().addWeighted(to, [entry(3.0, width=16)], 0.5)


def test_concat_appends_tokens(caplog):
    to = [entry(1.0), entry(2.0, tokens=4)]
    with caplog.at_level(logging.WARNING):
        (out,) = ConditioningConcat().concat(to, [entry(5.0, tokens=2), entry(9.0)])
    assert "only the first is used" in caplog.text
    assert [c.shape[1] for c, _ in out] == [5, 6] and out[1][0][0, :, 0].tolist() == [2, 2, 2, 2, 5, 5]
    assert out[0][1] is not to[0][1]  # options are copied


def test_region_nodes_set_comfyuis_options():
    base = [entry(1.0)]
    (masked,) = ConditioningSetMask().append(base, torch.ones(4, 4), 0.7, "mask bounds")
    opts = masked[0][1]
    assert opts["mask"].shape == (1, 4, 4) and opts["mask_strength"] == 0.7 and opts["set_area_to_bounds"] is True
    assert ConditioningSetMask().append(base, torch.ones(4, 4), 1.0, "default")[0][0][1]["set_area_to_bounds"] is False
    (pct,) = ConditioningSetAreaPercentage().append(base, 0.5, 0.25, 0.5, 0.0, 2.0)
    assert pct[0][1]["area"] == ("percentage", 0.25, 0.5, 0.0, 0.5) and pct[0][1]["strength"] == 2.0
    assert ConditioningSetAreaStrength().append(base, 3.0)[0][0][1]["strength"] == 3.0
    assert "strength" not in base[0][1]  # the input is not changed


def test_percentage_area_runs_on_its_crop(fake_unet):
    (pct,) = ConditioningSetAreaPercentage().append(cond(2.0), 0.5, 0.25, 0.5, 0.0, 1.0)
    x, sigma = torch.zeros(1, 4, 16, 16), torch.tensor([1.0])
    den = CFGDenoiser(fake_unet, SD15, cond(0.0) + pct, cond(0.0), 1.0)(x, sigma)
    assert (1, 4, 4, 8) in {c["shape"] for c in fake_unet.calls}  # rows 0..3, columns 8..15
    assert float(den[0, 0, 1, 12]) > float(den[0, 0, 12, 12]) == pytest.approx(float(den[0, 0, 12, 2]))


def test_mask_bounds_crop_the_model_call_but_not_the_result(fake_unet):
    mask = torch.zeros(1, 128, 128)  # pixel size: resized to the 16x16 latent
    mask[:, 16:48, 24:104] = 1.0  # latent rows 2..5, columns 3..12
    x, sigma = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([2.0])
    results = {}
    for mode in ("default", "mask bounds"):
        unet = FakeUNet()
        (region,) = ConditioningSetMask().append(cond(3.0), mask, 1.0, mode)
        results[mode] = CFGDenoiser(unet, SD15, cond(0.0) + region, cond(0.0), 1.0)(x, sigma)
        results[mode + " shapes"] = {c["shape"] for c in unet.calls}
    assert results["default shapes"] == {(2, 4, 16, 16)}  # both entries on the whole latent, in one call
    # the bounding box: latent rows 2..5 (grown to ComfyUI's minimum of 8) and columns 3..12
    assert results["mask bounds shapes"] == {(1, 4, 16, 16), (1, 4, 8, 10)}
    assert torch.allclose(results["default"], results["mask bounds"], atol=1e-5)  # the fake model is per-pixel


def test_a_mask_batch_that_does_not_fit_the_latent_is_named(fake_unet):
    (region,) = ConditioningSetMask().append(cond(3.0), torch.ones(2, 8, 8), 1.0, "default")
    with pytest.raises(ValueError, match="conditioning mask \\(ConditioningSetMask\\) holds 2 masks but the latent "
                                         "batch has 3 items"):
        CFGDenoiser(fake_unet, SD15, region, cond(0.0), 1.0)(torch.zeros(3, 4, 8, 8), torch.tensor([1.0]))
    ok = CFGDenoiser(fake_unet, SD15, region, cond(0.0), 1.0)(torch.zeros(4, 4, 8, 8), torch.tensor([1.0]))
    assert ok.shape == (4, 4, 8, 8)


def test_differential_mask_thresholds_by_remaining_timesteps():
    table = SD15.sigmas
    sigmas = torch.stack([table[999], table[499], table[249], torch.tensor(0.0)])
    mask = torch.tensor([0.2, 0.3, 0.6, 1.0])
    full = DifferentialMask(1.0)
    # threshold = (t - t_min) / (t_first - t_min): 1 at the first step, 499/999 and 249/999 later
    assert full(sigmas[0:1], mask, SD15, sigmas).tolist() == [0, 0, 0, 1]
    assert full(sigmas[1:2], mask, SD15, sigmas).tolist() == [0, 0, 1, 1]
    assert full(sigmas[2:3], mask, SD15, sigmas).tolist() == [0, 1, 1, 1]
    half = DifferentialMask(0.5)(sigmas[1:2], mask, SD15, sigmas)
    assert half.tolist() == pytest.approx([0.1, 0.15, 0.8, 1.0])
    assert DifferentialMask(0.0)(sigmas[1:2], mask, SD15, sigmas).tolist() == [0, 0, 1, 1]  # ComfyUI: 0 = binary


class ClonableUNet(FakeUNet):
    def clone(self):
        return copy.copy(self)


def test_differential_diffusion_patches_a_clone_and_the_sampler_calls_it():
    unet = ClonableUNet()
    (patched,) = DifferentialDiffusion().apply(unet, 0.5)
    assert not hasattr(unet, "denoise_mask_function") and patched.denoise_mask_function.strength == 0.5
    seen = []

    def keep_everything(sigma, mask, model_sampling, sigmas):
        seen.append((float(sigma), sigmas))
        return torch.zeros_like(mask)

    patched.denoise_mask_function = keep_everything
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)),
              "noise_mask": torch.ones(1, 1, 64, 64)}
    sigmas = torch.stack([SD15.sigmas[999], SD15.sigmas[500], torch.tensor(0.0)])
    guider = CFGGuider(patched, cond(1.0), cond(0.0), 1.0)
    out, _ = sample_latent(guider, Sampler.named("euler"), sigmas, latent, RandomNoise(3))
    # the hook's all-zero mask keeps every pixel on the input, though noise_mask asked for a full repaint
    assert torch.allclose(out["samples"], latent["samples"], atol=1e-5)
    assert [s for s, _ in seen] == pytest.approx(sigmas[:2].tolist()) and torch.equal(seen[0][1], sigmas)
    plain, _ = sample_latent(CFGGuider(unet, cond(1.0), cond(0.0), 1.0), Sampler.named("euler"), sigmas, latent,
                             RandomNoise(3))
    assert not torch.allclose(plain["samples"], latent["samples"], atol=1e-2)
