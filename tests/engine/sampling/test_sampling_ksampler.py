"""common_ksampler: noise, denoise/start/end, CFG, area conds, token lengths, SDXL adm, callbacks."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import FakeUNet, cond  # noqa: E402

from comfykit.engine.sampling.ksampler import CFGDenoiser, common_ksampler, prepare_noise  # noqa: E402
from comfykit.engine.sampling.latent_formats import LatentFormat  # noqa: E402
from comfykit.engine.sampling.schedulers import ModelSamplingDiscrete  # noqa: E402

SD15 = ModelSamplingDiscrete()


def _latent(b=1, h=8, w=8, fill=0.0):
    return {"samples": torch.full((b, 4, h, w), fill)}


def test_prepare_noise_first_values_match_comfyui():
    noise = prepare_noise(torch.zeros(1, 4, 64, 64), 0)
    assert noise.dtype == torch.float32 and noise.device.type == "cpu"
    assert noise[0, 0, 0, :5].tolist() == pytest.approx([-1.1258398, -1.1523602, -0.2505786, -0.4338788, 0.8487104],
                                                         abs=1e-6)


def test_prepare_noise_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    prepare_noise(torch.zeros(1, 4, 8, 8), 0)
    assert torch.equal(torch.rand(3), expected)
    huge = 0xFFFFFFFFFFFFFFFF  # ComfyUI's largest seed
    assert torch.equal(prepare_noise(torch.zeros(1, 4, 2, 2), huge), prepare_noise(torch.zeros(1, 4, 2, 2), huge))


def test_batch_index_reproduces_one_item_of_a_batch():
    batch = prepare_noise(torch.zeros(2, 4, 8, 8), 42)
    single = prepare_noise(torch.zeros(1, 4, 8, 8), 42)
    assert torch.equal(batch[:1], single)
    assert torch.equal(prepare_noise(torch.zeros(1, 4, 8, 8), 42, batch_index=[1]), batch[1:])
    three = prepare_noise(torch.zeros(3, 4, 8, 8), 42)
    assert torch.equal(prepare_noise(torch.zeros(2, 4, 8, 8), 42, batch_index=[2, 0]), three[[2, 0]])
    with pytest.raises(ValueError, match="batch_index has 1 entries but the latent holds 2"):
        prepare_noise(torch.zeros(2, 4, 8, 8), 42, batch_index=[3])


def test_txt2img_converges_to_the_conditioned_mean(fake_unet):
    out = common_ksampler(fake_unet, 0, 20, 1.0, "dpmpp_2m", "karras", cond(2.0), cond(0.0), _latent())
    samples = out["samples"]
    assert samples.dtype == torch.float32 and samples.shape == (1, 4, 8, 8)
    # the fake model's data mean is the context value, in model space: raw = model / 0.18215
    assert float(samples.mean() * 0.18215) == pytest.approx(2.0, abs=0.15)


def test_cfg_one_skips_the_uncond_pass(fake_unet):
    common_ksampler(fake_unet, 0, 4, 1.0, "euler", "normal", cond(1.0), cond(0.0), _latent())
    assert [c["batch"] for c in fake_unet.calls] == [1] * 4
    guided = FakeUNet()
    common_ksampler(guided, 0, 4, 7.5, "euler", "normal", cond(1.0), cond(0.0), _latent())
    assert [c["batch"] for c in guided.calls] == [2] * 4  # cond and uncond batched together


def test_cfg_combines_in_denoised_space(fake_unet):
    x, sigma = torch.randn(1, 4, 8, 8) * 3, torch.tensor([3.0])
    pos = CFGDenoiser(fake_unet, SD15, cond(1.0), cond(-1.0), 1.0)(x, sigma)
    neg = CFGDenoiser(fake_unet, SD15, cond(-1.0), cond(1.0), 1.0)(x, sigma)
    guided = CFGDenoiser(fake_unet, SD15, cond(1.0), cond(-1.0), 4.0)(x, sigma)
    assert torch.allclose(guided, neg + (pos - neg) * 4.0, atol=1e-5)


def test_several_conds_average_by_strength_and_area(fake_unet):
    x, sigma = torch.zeros(1, 4, 16, 16), torch.tensor([1.0])
    whole = cond(0.0)[0]
    left = [torch.full((1, 77, 8), 3.0), {"area": (16, 8, 0, 0), "strength": 2.0}]
    den = CFGDenoiser(fake_unet, SD15, [whole, left], cond(0.0), 1.0)(x, sigma)
    only_whole = CFGDenoiser(fake_unet, SD15, [whole], cond(0.0), 1.0)(x, sigma)
    only_left = CFGDenoiser(fake_unet, SD15, [[left[0], {}]], cond(0.0), 1.0)(x, sigma)
    # deep inside the area: (1*whole + 2*left) / 3; right half: whole only
    assert torch.allclose(den[..., 0], (only_whole[..., 0] + 2 * only_left[..., 0]) / 3, atol=1e-5)
    assert torch.allclose(den[..., 12:], only_whole[..., 12:], atol=1e-6)
    # the area's inner edge is feathered over min(8, width // 4) = 2 columns, as ComfyUI: column 7 has weight
    # 2 * 1/2, column 6 the full 2
    w = 2 * 1 / 2
    assert torch.allclose(den[..., 7], (only_whole[..., 7] + w * only_left[..., 7]) / (1 + w), atol=1e-5)
    assert torch.allclose(den[..., 6], (only_whole[..., 6] + 2 * only_left[..., 6]) / 3, atol=1e-5)
    assert {c["shape"] for c in fake_unet.calls} >= {(1, 4, 16, 8)}  # the area is evaluated on its crop


def test_mask_weights_a_cond(fake_unet):
    x, sigma = torch.zeros(1, 4, 8, 8), torch.tensor([1.0])
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0
    den = CFGDenoiser(fake_unet, SD15, [[torch.full((1, 77, 8), 3.0), {"mask": mask}]], cond(0.0), 1.0)(x, sigma)
    assert float(den[..., 0].mean()) > 0.5 and float(den[..., 6].abs().max()) == 0.0  # uncovered pixels give 0


def test_conds_of_different_token_lengths(fake_unet):
    long_pos = cond(1.0, tokens=154)
    out = common_ksampler(fake_unet, 3, 3, 5.0, "euler", "normal", long_pos, cond(0.0), _latent())
    ref = common_ksampler(FakeUNet(), 3, 3, 5.0, "euler", "normal", cond(1.0), cond(0.0), _latent())
    assert {c["tokens"] for c in fake_unet.calls} == {154}
    assert torch.allclose(out["samples"], ref["samples"], atol=1e-5)


class FakeSDXL(FakeUNet):
    """The fake UNet conditioned the way the real SDXL family conditions: an adm vector per cond."""

    arch = "sdxl"

    def __init__(self):
        from comfykit.engine.models.sd import SDXL
        from comfykit.engine.models.unet import UNetConfig

        super().__init__()
        self.family, self.config = SDXL(), UNetConfig(adm_in_channels=2816)

    def model_inputs(self, cond, options, x):
        return self.family.model_inputs(self, cond, options, x)


def test_sdxl_gets_an_adm_vector_per_cond():
    model = FakeSDXL()
    pooled = torch.randn(1, 1280)
    pos = cond(1.0, pooled_output=pooled, width=1024, height=1024, target_width=512)
    common_ksampler(model, 0, 2, 3.0, "euler", "normal", pos, cond(0.0), _latent(h=8, w=12))
    want_pos = model.family.encode_adm(model.config, pooled, 1024, 1024, target_width=512)
    want_neg = model.family.encode_adm(model.config, None, 96, 64)
    assert want_pos.shape == (1, 2816) and torch.equal(want_pos[:, :1280], pooled)
    for call in model.calls:  # positive and negative batched together, each with its own sizes
        assert call["y"].shape == (2, 2816)
        assert torch.equal(call["y"], torch.cat([want_pos, want_neg]))


def test_callback_gets_every_step_and_its_exception_stops_sampling(fake_unet):
    seen = []
    common_ksampler(fake_unet, 0, 5, 1.0, "heun", "normal", cond(1.0), cond(0.0), _latent(),
                    callback=lambda step, total, x0, x: seen.append((step, total, tuple(x0.shape))))
    assert seen == [(i, 5, (1, 4, 8, 8)) for i in range(5)]

    class Stop(Exception):
        pass

    def interrupt(step, total, x0, x):
        if step == 1:
            raise Stop

    model = FakeUNet()
    with pytest.raises(Stop):
        common_ksampler(model, 0, 10, 1.0, "euler", "normal", cond(1.0), cond(0.0), _latent(), callback=interrupt)
    assert len(model.calls) == 2


def test_denoise_and_start_step_edge_cases_return_the_latent_unchanged(fake_unet):
    latent = _latent(fill=0.3)
    latent["batch_index"] = [0]
    out = common_ksampler(fake_unet, 0, 10, 7.0, "euler", "normal", cond(1.0), cond(0.0), latent, denoise=0.0)
    assert torch.equal(out["samples"], latent["samples"]) and out["batch_index"] == [0]
    out = common_ksampler(fake_unet, 0, 10, 7.0, "euler", "normal", cond(1.0), cond(0.0), latent, start_step=10)
    assert torch.equal(out["samples"], latent["samples"]) and not fake_unet.calls


def test_img2img_uses_the_tail_of_the_schedule(fake_unet):
    common_ksampler(fake_unet, 0, 4, 1.0, "euler", "normal", cond(1.0), cond(0.0), _latent(fill=0.5), denoise=0.5)
    assert [int(c["t"][0]) for c in fake_unet.calls] == [428, 285, 143, 0]  # tail of an 8-step schedule


class IdentityUNet(FakeUNet):
    """Predicts zero noise, so sampling with disabled noise returns the starting latent."""

    def __call__(self, x, timesteps, context, y=None):
        return torch.zeros_like(x)


def test_empty_latent_is_not_shifted():
    model = IdentityUNet()
    model.latent_format = LatentFormat("Shifted", 0.5, 0.1, 4)
    out = common_ksampler(model, 0, 3, 1.0, "euler", "normal", cond(0.0), cond(0.0), _latent(), disable_noise=True)
    assert torch.allclose(out["samples"], torch.full((1, 4, 8, 8), 0.1))  # process_out only
    raw = _latent(fill=0.7)
    out = common_ksampler(model, 0, 3, 1.0, "euler", "normal", cond(0.0), cond(0.0), raw, disable_noise=True)
    assert torch.allclose(out["samples"], raw["samples"], atol=1e-6)  # process_in then process_out


def test_advanced_steps_chain_like_one_run(fake_unet):
    full = common_ksampler(FakeUNet(), 5, 6, 1.0, "euler", "karras", cond(1.0), cond(0.0), _latent())
    first = common_ksampler(fake_unet, 5, 6, 1.0, "euler", "karras", cond(1.0), cond(0.0), _latent(),
                            last_step=3)
    second = common_ksampler(fake_unet, 5, 6, 1.0, "euler", "karras", cond(1.0), cond(0.0), first,
                             disable_noise=True, start_step=3)
    assert torch.allclose(second["samples"], full["samples"], atol=1e-4)


def test_bad_input_is_named():
    model = FakeUNet()
    with pytest.raises(ValueError, match="did you mean 'euler'"):
        common_ksampler(model, 0, 2, 1.0, "eulr", "normal", cond(1.0), cond(0.0), _latent())
    with pytest.raises(ValueError, match="16 channels but the model expects 4"):
        common_ksampler(model, 0, 2, 1.0, "euler", "normal", cond(1.0), cond(0.0),
                        {"samples": torch.ones(1, 16, 8, 8)})
    with pytest.raises(ValueError, match="positive conditioning is empty"):
        common_ksampler(model, 0, 2, 1.0, "euler", "normal", [], cond(0.0), _latent())


@pytest.mark.parametrize("sampler", ["euler", "ddim", "dpmpp_2m"])
def test_noise_mask_keeps_the_unmasked_region(fake_unet, sampler):
    latent = _latent(fill=0.4)
    mask = torch.ones(64, 64)  # pixel resolution, resized to the 8x8 latent
    mask[:, :32] = 0.0
    latent["noise_mask"] = mask
    out = common_ksampler(fake_unet, 0, 6, 3.0, sampler, "karras", cond(1.0), cond(0.0), latent)["samples"]
    assert torch.allclose(out[..., :3], latent["samples"][..., :3], atol=1e-5)
    assert not torch.allclose(out[..., 5:], latent["samples"][..., 5:], atol=1e-2)
