"""T2I-Adapters: TencentARC's and diffusers' layouts load to one network; its features steer the UNet as ComfyUI's do.

Sampling with an SD1 adapter equals diffusers' StableDiffusionAdapterPipeline on the same tiny weights; the light and
SDXL adapters are checked at the UNet (diffusers adds a feature to a skip connection only inside attention blocks,
ComfyUI everywhere: the tiny light UNet has attention at every level so both agree).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from comfykit import demo  # noqa: E402
from comfykit.engine.models import load_checkpoint  # noqa: E402
from comfykit.engine.models.checkpoint import load_diffusion_model  # noqa: E402
from comfykit.engine.models.controlnet import load_controlnet  # noqa: E402
from comfykit.engine.models.tiny_controlnet import (  # noqa: E402
    make_controlnet,
    make_t2i_unet,
    t2i_unet_config,
    tiny_t2i_adapter,
)
from comfykit.engine.sampling.ksampler import common_ksampler, prepare_noise, select_sigmas  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402
from comfykit.nodes.controlnet import ControlNetApplyAdvanced  # noqa: E402

LAYOUTS = (("ldm", "t2iadapter_tiny.safetensors"), ("ldm-pth", "t2iadapter_tiny.pth"),
           ("diffusers", "diffusion_pytorch_model.safetensors"), ("diffusers-folder", "t2iadapter_folder"))


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory):
    path = demo.make_diffusers_folder(tmp_path_factory.mktemp("t2i") / "sd1", "sd1", seed=0)
    return path, load_checkpoint(path)[0]


@pytest.fixture(scope="module")
def unets(tmp_path_factory):
    base = tmp_path_factory.mktemp("t2i_unets")
    return {arch: load_diffusion_model(make_t2i_unet(base / f"{arch}.safetensors", arch, seed=2))
            for arch in ("sd1-t2i-light", "sdxl-t2i")}


def _embeddings(seed=0, width=32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 77, width, generator=gen), torch.randn(1, 77, width, generator=gen)


def _hint(seed, size=64):
    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))


def _sample(model, cond, uncond, controls, steps=3, size=64, **options):
    positive, negative = [[cond, options]], [[uncond, options]]
    for cnet, hint, strength in controls:
        positive, negative = ControlNetApplyAdvanced().apply_controlnet(positive, negative, cnet, hint, strength,
                                                                        0.0, 1.0)
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    return model.latent_format.process_in(
        common_ksampler(model, 7, steps, 4.0, "euler", "simple", positive, negative, latent)["samples"])


@pytest.mark.parametrize("arch", ["sd1-t2i", "sd1-t2i-light", "sdxl-t2i"])
def test_every_layout_loads_the_same_adapter(arch, tmp_path):
    reference = tiny_t2i_adapter(arch, seed=1).state_dict()
    for layout, name in LAYOUTS:
        net = load_controlnet(make_controlnet(tmp_path / name, arch=arch, layout=layout, seed=1)).model.network
        got = net.net.state_dict()
        assert set(got) == set(reference), layout
        assert all(torch.equal(got[k], v) for k, v in reference.items()), layout
        assert net.net.config.adapter_type == tiny_t2i_adapter(arch).config.adapter_type
    assert "T2I-Adapter" in repr(load_controlnet(tmp_path / LAYOUTS[0][1]).model)


def test_sd1_adapter_sampling_equals_diffusers_adapter_pipeline(sd1_folder, tmp_path):
    folder, model = sd1_folder
    cond, uncond = _embeddings()
    cnet = load_controlnet(make_controlnet(tmp_path / "t2i.pth", arch="sd1-t2i", layout="ldm-pth", seed=1))
    ours = _sample(model, cond, uncond, [(cnet, _hint(0), 0.7)])
    plain = _sample(model, cond, uncond, [])
    assert (ours - plain).abs().max() > 0.05  # the adapter changes the result

    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    scheduler = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                 timestep_spacing="leading")
    pipe = diffusers.StableDiffusionAdapterPipeline(
        vae=None, text_encoder=None, tokenizer=None, unet=unet, adapter=tiny_t2i_adapter("sd1-t2i", 1),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sigmas = select_sigmas(model.model_sampling, "euler", "simple", 3)
    theirs = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, image=_hint(0).movedim(-1, 1), height=64,
                  width=64, latents=prepare_noise(torch.zeros(1, 4, 8, 8), 7), sigmas=sigmas.tolist(),
                  guidance_scale=4.0, adapter_conditioning_scale=0.7, output_type="latent").images
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-3)


def test_light_adapter_features_reach_the_unet_as_in_diffusers(unets, tmp_path):
    from comfykit.engine.models import diffusers_export, keys

    model = unets["sd1-t2i-light"]
    net = load_controlnet(make_controlnet(tmp_path / "light.pth", arch="sd1-t2i-light", layout="ldm-pth",
                                          seed=3)).model.network
    theirs_unet = diffusers.UNet2DConditionModel(**diffusers_export.diffusers_unet_config(
        t2i_unet_config("sd1-t2i-light"))).eval()
    diffusers_export._fill(theirs_unet, model.network.state_dict(),
                           list(keys.unet_diffusers_to_ldm(theirs_unet.state_dict())))
    gen = torch.Generator().manual_seed(0)
    x, ctx, hint = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 77, 32, generator=gen), \
        torch.rand(1, 3, 64, 64, generator=gen)
    t = torch.tensor([500.0])
    with torch.no_grad():
        control = net.features(hint, model)
        ours = model.network(x, t, ctx, control={k: [None if v is None else v * 0.5 for v in vs]
                                                 for k, vs in control.items()})
        feats = [f * 0.5 for f in tiny_t2i_adapter("sd1-t2i-light", 3)(hint)]
        theirs = theirs_unet(x, t, ctx, down_intrablock_additional_residuals=feats).sample
        plain = model.network(x, t, ctx)
    assert (ours - plain).abs().max() > 0.01
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_sdxl_adapter_runs_and_strength_zero_equals_no_control(unets, tmp_path):
    model = unets["sdxl-t2i"]
    cnet = load_controlnet(make_controlnet(tmp_path / "xl.safetensors", arch="sdxl-t2i", layout="diffusers",
                                           seed=4))
    cond, uncond = _embeddings(1, width=64)
    options = {"pooled_output": torch.randn(1, 32)}
    # 72 x 72: the hint is rounded up to 80 (the XL unshuffle factor, 16) and the features still fit the UNet
    plain = _sample(model, cond, uncond, [], steps=2, size=72, **options)
    steered = _sample(model, cond, uncond, [(cnet, _hint(5, 96), 1.0)], steps=2, size=72, **options)
    assert (steered - plain).abs().max() > 0.05
    # strength 0 through the residual path (the apply node skips it altogether)
    zero = cnet.with_hint(_hint(5, 96).movedim(-1, 1), strength=0.0)
    positive, negative = [[cond, {**options, "control": zero}]], [[uncond, {**options, "control": zero}]]
    out = common_ksampler(model, 7, 2, 4.0, "euler", "simple", positive, negative,
                          {"samples": torch.zeros(1, 4, 9, 9)})["samples"]
    torch.testing.assert_close(model.latent_format.process_in(out), plain)


def test_one_channel_adapter_reads_the_mean_of_the_image(sd1_folder, tmp_path):
    from comfykit.engine.models.controlnet_t2i import T2IAdapterNet

    _, model = sd1_folder
    net = T2IAdapterNet(tiny_t2i_adapter("sd1-t2i", 6, in_channels=1))
    from comfykit.engine.models.controlnet import ControlModel, ControlNet

    cnet = ControlNet(ControlModel(net, "sketch.pth"))
    cond, uncond = _embeddings(2)
    rgb = _hint(7)
    gray = rgb.mean(dim=-1, keepdim=True)
    a = _sample(model, cond, uncond, [(cnet, rgb, 1.0)], steps=1)
    b = _sample(model, cond, uncond, [(cnet, gray, 1.0)], steps=1)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # the mean taken before or after the resize


def test_adapter_for_another_family_is_a_model_error(sd1_folder, unets, tmp_path):
    _, sd1 = sd1_folder
    xl = load_controlnet(make_controlnet(tmp_path / "xl_depth.safetensors", arch="sdxl-t2i", layout="ldm"))
    cond, uncond = _embeddings()
    with pytest.raises(ModelError, match=r"xl_depth.safetensors: this is an SDXL T2I-Adapter .* model is sd1"):
        _sample(sd1, cond, uncond, [(xl, _hint(0), 1.0)], steps=1)
    light = load_controlnet(make_controlnet(tmp_path / "light.pth", arch="sd1-t2i-light", layout="ldm-pth"))
    with pytest.raises(ModelError, match=r"light.pth: this is an SD1.x/SD2.x T2I-Adapter \(light.* model is sd1"):
        _sample(sd1, cond, uncond, [(light, _hint(0), 1.0)], steps=1)


def test_adapter_variants_diffusers_lacks_are_model_errors(tmp_path):
    from safetensors.torch import save_file

    sd = make_controlnet(tmp_path / "a.safetensors", arch="sd1-t2i", layout="ldm")
    from comfykit.engine.models.checkpoint import read_state_dict

    weights = dict(read_state_dict(sd))
    weights["body.2.down_opt.op.weight"] = torch.zeros(32, 32, 3, 3)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "conv_down.safetensors"))
    with pytest.raises(ModelError, match="conv_down.safetensors: a T2I-Adapter that downsamples with convolutions"):
        load_controlnet(tmp_path / "conv_down.safetensors")
