"""The model-family seam: detection order, the SDXL refiner, the VAE without quant convs, and the sampling contract."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from comfykit.engine.models import load_checkpoint  # noqa: E402
from comfykit.engine.models.checkpoint import FAMILIES, detect_family, infer_vae_config  # noqa: E402
from comfykit.engine.models.family import DiffusionModel, ModelFamily, ModelInputs  # noqa: E402
from comfykit.engine.models.keys import split_checkpoint  # noqa: E402
from comfykit.engine.models.vae import AutoencoderKL, VAEConfig  # noqa: E402
from comfykit.engine.sampling.ksampler import common_ksampler  # noqa: E402
from comfykit.engine.sampling.latent_formats import Flux  # noqa: E402
from comfykit.engine.sampling.schedulers import ModelSamplingFlux  # noqa: E402


def test_each_demo_checkpoint_is_detected_as_its_family(make_ckpt):
    from safetensors.torch import load_file

    want = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl", "sdxl-refiner": "sdxl_refiner"}
    for arch, family in want.items():
        parts = split_checkpoint(load_file(str(make_ckpt(arch))))
        assert detect_family(parts).name == family, arch
    assert detect_family({"unet": {"some.weight": torch.zeros(1)}, "vae": {}}) is None
    assert [f.name for f in FAMILIES][-1] == "sd1"  # the catch-all UNet family is tried last


def test_sdxl_refiner_loads_with_only_openclip_g_and_embeds_an_aesthetic_score(make_ckpt):
    model, clip, vae = load_checkpoint(make_ckpt("sdxl-refiner"))
    assert model.arch == "sdxl_refiner" and list(clip.clips) == ["clip_g"]
    cond, pooled = clip.encode("a photo of a cat")
    assert cond.shape[-1] == 32 and pooled.shape == (1, 32)
    x = torch.zeros(1, 4, 8, 8)
    pos = model.model_inputs(cond, {"pooled_output": pooled}, x).pooled
    neg = model.model_inputs(cond, {"pooled_output": pooled, "prompt_type": "negative"}, x).pooled
    assert pos.shape == (1, 32 + 5 * 256)
    assert not torch.equal(pos, neg)  # 6.0 vs 2.5, as ComfyUI scores positive and negative prompts
    scored = model.model_inputs(cond, {"pooled_output": pooled, "aesthetic_score": 2.5}, x).pooled
    assert torch.equal(scored, neg)
    out = common_ksampler(model, 0, 1, 7.0, "euler", "normal", [[cond, {"pooled_output": pooled}]],
                          [[cond, {"pooled_output": pooled}]], {"samples": torch.zeros(1, 4, 8, 8)})
    assert out["samples"].shape == (1, 4, 8, 8) and torch.isfinite(out["samples"]).all()


def test_vae_without_quant_convs_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    from comfykit.engine.models import keys

    ref = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(32, 64),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, norm_num_groups=32, use_quant_conv=False,
                                  use_post_quant_conv=False).eval()
    sd = keys.vae_state_dict(ref.state_dict())
    cfg = infer_vae_config(sd)
    assert cfg == VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=16, quant_conv=False)
    ours = AutoencoderKL(cfg)
    ours.load_state_dict(sd)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), ref.encode(x).latent_dist.mean, atol=1e-5, rtol=1e-4)
        z = torch.randn(1, 16, 16, 16)
        torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, atol=1e-5, rtol=1e-4)


class _Echo(ModelFamily):
    """A made-up flow family whose network returns what the contract hands it, to test the seam itself."""

    name = "echo"
    latent_format = Flux
    repeat_context = False

    def model_inputs(self, model, cond, options, x):
        guidance = torch.tensor([float(options.get("guidance", 3.5))])
        return ModelInputs(context=cond, pooled=options.get("pooled_output"), guidance=guidance,
                           concat=options.get("concat"))

    def forward(self, network, x, t, inputs):
        network.calls.append(inputs)
        return torch.zeros_like(x)


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = []


def _echo_model():
    return DiffusionModel(_Recorder(), _Echo(), None, ModelSamplingFlux(shift=1.15))


def test_contract_carries_pooled_guidance_and_concat_and_never_repeats_dit_tokens():
    model = _echo_model()
    pooled = torch.randn(1, 8)
    pos = [[torch.ones(1, 5, 4), {"pooled_output": pooled, "guidance": 2.0, "concat": torch.ones(1, 3, 8, 8)}]]
    neg = [[torch.zeros(1, 7, 4), {"pooled_output": pooled, "guidance": 2.0, "concat": torch.ones(1, 3, 8, 8)}]]
    common_ksampler(model, 0, 1, 4.0, "euler", "simple", pos, neg, {"samples": torch.zeros(1, 16, 8, 8)})
    # 5 and 7 tokens: a joint-attention model gets them in separate calls, never repeated to 35
    assert sorted(c.context.shape[1] for c in model.network.calls) == [5, 7]
    call = model.network.calls[0]
    assert call.guidance.tolist() == [2.0] and call.concat.shape == (1, 3, 8, 8)
    torch.testing.assert_close(call.pooled, pooled)


def test_timestep_range_limits_where_a_cond_takes_part():
    model = _echo_model()
    early = [[torch.ones(1, 5, 4), {"start_percent": 0.0, "end_percent": 0.5}]]
    late = [[torch.full((1, 6, 4), 2.0), {"start_percent": 0.5, "end_percent": 1.0}]]
    common_ksampler(model, 0, 4, 1.0, "euler", "simple", early + late, [], {"samples": torch.zeros(1, 16, 8, 8)})
    used = [c.context.shape[1] for c in model.network.calls]
    # steps 1-2 see only the early cond, step 4 only the late one; step 3 sits exactly on the 50% sigma, where
    # ComfyUI's inclusive bounds let both take part (in separate calls: their token counts differ)
    assert used == [5, 5, 5, 6, 6]
