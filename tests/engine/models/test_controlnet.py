"""ControlNets: the downloaded layouts load to the same network, and sampling with them equals diffusers' pipeline.

comfykit samples through KSampler's path (CONTROL_NET on the conditioning, its residuals in comfykit's LDM UNet);
diffusers through StableDiffusionControlNetPipeline with the same tiny weights, embeddings, noise and sigmas.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from comfykit import demo  # noqa: E402
from comfykit.engine.models import load_checkpoint  # noqa: E402
from comfykit.engine.models.controlnet import load_controlnet  # noqa: E402
from comfykit.engine.models.tiny_controlnet import make_controlnet, tiny_controlnet  # noqa: E402
from comfykit.engine.sampling.ksampler import common_ksampler, prepare_noise, select_sigmas  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402
from comfykit.nodes.controlnet import ControlNetApply, ControlNetApplyAdvanced  # noqa: E402


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory):
    """The demo SD1 model as a diffusers folder: comfykit loads it with its own loader, diffusers with its own."""
    path = demo.make_diffusers_folder(tmp_path_factory.mktemp("cnet") / "sd1", "sd1", seed=0)
    return path, load_checkpoint(path)[0]


@pytest.fixture(scope="module")
def cnet_files(tmp_path_factory):
    base = tmp_path_factory.mktemp("cnet_files")
    return {layout: make_controlnet(base / name, layout=layout, seed=1) for layout, name in (
        ("ldm", "control_tiny_sd15.safetensors"), ("ldm-pth", "control_tiny_sd15.pth"),
        ("diffusers", "diffusion_pytorch_model.safetensors"), ("diffusers-folder", "tiny_sd15_folder"))}


def _embeddings(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 77, 32, generator=gen), torch.randn(1, 77, 32, generator=gen)


def _hint(seed, size=64):
    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))  # an IMAGE, [B, H, W, C]


def _ours(model, cond, uncond, controls, seed=7, steps=3, cfg=4.0, **options):
    """KSampler (euler, simple) with each (CONTROL_NET, hint, strength) applied in turn by ControlNetApplyAdvanced."""
    positive, negative = [[cond, {}]], [[uncond, {}]]
    for cnet, hint, strength, *percent in controls:
        start, end = percent or (0.0, 1.0)
        positive, negative = ControlNetApplyAdvanced().apply_controlnet(positive, negative, cnet, hint, strength,
                                                                        start, end)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    out = common_ksampler(model, seed, steps, cfg, "euler", "simple", positive, negative, latent, **options)
    return model.latent_format.process_in(out["samples"])


def _theirs(folder, model, cond, uncond, controls, seed=7, steps=3, cfg=4.0):
    """StableDiffusionControlNetPipeline on the same weights, embeddings, initial noise and sigmas."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    nets = [c for c, _, _ in controls]
    sigmas = select_sigmas(model.model_sampling, "euler", "simple", steps)
    # ComfyUI scales the first noise by sqrt(1 + sigma^2); diffusers' "leading" spacing does the same
    scheduler = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                 timestep_spacing="leading")
    pipe = diffusers.StableDiffusionControlNetPipeline(
        vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
        controlnet=nets[0] if len(nets) == 1 else MultiControlNetModel(nets))
    images = [h.movedim(-1, 1) for _, h, _ in controls]
    scales = [s for _, _, s in controls]
    out = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=prepare_noise(torch.zeros(1, 4, 8, 8), seed),
               image=images[0] if len(images) == 1 else images, height=64, width=64, sigmas=sigmas.tolist(),
               guidance_scale=cfg, controlnet_conditioning_scale=scales[0] if len(scales) == 1 else scales,
               output_type="latent").images
    return out


def test_every_layout_loads_the_same_network(cnet_files):
    reference = tiny_controlnet("sd1", seed=1).state_dict()
    for layout, path in cnet_files.items():
        cnet = load_controlnet(path)
        got = cnet.model.network.net.state_dict()
        assert set(got) == set(reference), layout
        for key, value in reference.items():
            assert torch.equal(got[key], value), (layout, key)
        assert "SD1.x ControlNet" in repr(cnet.model)


def test_sd15_controlnet_sampling_equals_diffusers_pipeline(sd1_folder, cnet_files):
    folder, model = sd1_folder
    cond, uncond = _embeddings()
    controls = [(load_controlnet(cnet_files["ldm-pth"]), _hint(0), 0.7)]
    ours = _ours(model, cond, uncond, controls)
    plain = _ours(model, cond, uncond, [])
    theirs = _theirs(folder, model, cond, uncond, [(tiny_controlnet("sd1", 1), _hint(0), 0.7)])
    assert (ours - plain).abs().max() > 0.05  # the ControlNet changes the result
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-3)


def test_two_stacked_controlnets_equal_diffusers_multicontrolnet(sd1_folder, cnet_files, tmp_path):
    folder, model = sd1_folder
    cond, uncond = _embeddings(1)
    second = make_controlnet(tmp_path / "second.safetensors", layout="diffusers", seed=2)
    controls = [(load_controlnet(cnet_files["ldm"]), _hint(1), 0.5), (load_controlnet(second), _hint(2, 96), 1.2)]
    ours = _ours(model, cond, uncond, controls)
    theirs = _theirs(folder, model, cond, uncond,
                     [(tiny_controlnet("sd1", 1), _hint(1), 0.5),
                      # diffusers takes the hint at the output size: resize it as ComfyUI does (nearest-exact)
                      (tiny_controlnet("sd1", 2),
                       torch.nn.functional.interpolate(_hint(2, 96).movedim(-1, 1), size=(64, 64),
                                                       mode="nearest-exact").movedim(1, -1), 1.2)])
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-3)


def test_start_end_percent_limit_the_controlnet_to_a_sigma_range(sd1_folder, cnet_files):
    _, model = sd1_folder
    cond, uncond = _embeddings(2)
    cnet, hint = load_controlnet(cnet_files["diffusers"]), _hint(3)
    ms = model.model_sampling
    sigmas = select_sigmas(ms, "euler", "simple", 4)
    # an end percent whose sigma lies between the 2nd and 3rd step's: the ControlNet runs for the first two steps
    end = next(p / 1000 for p in range(1000) if sigmas[2] < ms.percent_to_sigma(p / 1000) < sigmas[1])
    limited = _ours(model, cond, uncond, [(cnet, hint, 1.0, 0.0, end)], steps=4)
    first = common_ksampler(model, 7, 4, 4.0, "euler", "simple",
                            *ControlNetApplyAdvanced().apply_controlnet([[cond, {}]], [[uncond, {}]], cnet, hint,
                                                                        1.0, 0.0, 1.0),
                            {"samples": torch.zeros(1, 4, 8, 8)}, last_step=2, force_full_denoise=False)
    rest = common_ksampler(model, 7, 4, 4.0, "euler", "simple", [[cond, {}]], [[uncond, {}]], first,
                           disable_noise=True, start_step=2)
    torch.testing.assert_close(limited, model.latent_format.process_in(rest["samples"]), atol=1e-5, rtol=1e-5)
    # a range no step falls in leaves the result as without the ControlNet
    never = _ours(model, cond, uncond, [(cnet, hint, 1.0, 0.999, 1.0)], steps=4)
    torch.testing.assert_close(never, _ours(model, cond, uncond, [], steps=4))


def test_old_apply_node_also_controls_the_negative(sd1_folder, cnet_files):
    _, model = sd1_folder
    cond, uncond = _embeddings(3)
    cnet, hint = load_controlnet(cnet_files["ldm"]), _hint(4)
    (positive,) = ControlNetApply().apply_controlnet([[cond, {}]], cnet, hint, 0.8)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    old = common_ksampler(model, 7, 2, 4.0, "euler", "simple", positive, [[uncond, {}]], latent)["samples"]
    new = _ours(model, cond, uncond, [(cnet, hint, 0.8)], steps=2)
    torch.testing.assert_close(model.latent_format.process_in(old), new)


def test_sdxl_controlnet_residuals_equal_diffusers(sdxl, tmp_path):
    model = sdxl[0]
    path = make_controlnet(tmp_path / "sdxl_cnet.safetensors", arch="sdxl", layout="ldm", seed=3)
    cnet = load_controlnet(path)
    assert "SDXL ControlNet" in repr(cnet.model)
    reference = tiny_controlnet("sdxl", 3)
    gen = torch.Generator().manual_seed(0)
    x, ctx, pooled = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, 64, generator=gen), \
        torch.randn(2, 32, generator=gen)
    hint, t = torch.rand(2, 3, 64, 64, generator=gen), torch.tensor([700.0, 700.0])
    y = model.encode_adm(pooled, 64, 64)
    ours = cnet.model.network.residuals(x, t, hint, ctx, y)
    with torch.no_grad():
        down, mid = reference(x, t, ctx, hint, added_cond_kwargs={
            "text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}, return_dict=False)
    for a, b in zip(ours["output"], down):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["middle"][0], mid, atol=1e-4, rtol=1e-4)


def test_controlnet_for_another_family_is_a_model_error(sd1, tmp_path):
    model = sd1[0]
    path = make_controlnet(tmp_path / "sdxl_canny.safetensors", arch="sdxl", layout="diffusers", seed=0)
    cnet = load_controlnet(path)
    cond, uncond = _embeddings()
    with pytest.raises(ModelError, match=r"sdxl_canny.safetensors: this is an SDXL ControlNet .* model is sd1"):
        _ours(model, cond[..., :32], uncond[..., :32], [(cnet, _hint(0), 1.0)], steps=1)


def test_a_file_that_is_not_a_controlnet_is_a_model_error(make_ckpt, tmp_path):
    with pytest.raises(ModelError, match=r"sd1.safetensors: not a ControlNet: this is a full checkpoint"):
        load_controlnet(make_ckpt("sd1"))
    from safetensors.torch import save_file

    save_file({"adapter.body.0.block1.weight": torch.zeros(4, 4, 3, 3), "adapter.conv_in.weight": torch.zeros(1)},
              str(tmp_path / "t2iadapter.safetensors"))
    with pytest.raises(ModelError, match="t2iadapter.safetensors: the T2I-Adapter weights are damaged"):
        load_controlnet(tmp_path / "t2iadapter.safetensors")


def test_sd3_controlnet_equals_diffusers_transformer_with_block_residuals(tmp_path):
    from safetensors.torch import save_file

    from comfykit.engine.models.checkpoint import load_diffusion_model
    from comfykit.engine.models.family import ModelInputs
    from comfykit.engine.models.tiny_controlnet import tiny_sd3_controlnet
    from comfykit.engine.models.tiny_dit import sd3_diffusers_to_sai, tiny_sd3

    # a 4-block MMDiT (width 4 x 8: ComfyUI's depth 4) steered by a 2-block ControlNet: residual k serves 2 blocks
    ref = tiny_sd3(seed=5, num_layers=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32)
    save_file({k: v.contiguous() for k, v in sd3_diffusers_to_sai(ref.state_dict()).items()},
              str(tmp_path / "sd35.safetensors"))
    model = load_diffusion_model(tmp_path / "sd35.safetensors")
    reference = tiny_sd3_controlnet(seed=6, num_layers=2, joint_attention_dim=32, caption_projection_dim=32,
                                    pooled_projection_dim=32)
    reference.save_pretrained(tmp_path / "sd3_cnet")
    cnet = load_controlnet(tmp_path / "sd3_cnet")
    assert "SD3/SD3.5 ControlNet (2 blocks" in repr(cnet.model)

    gen = torch.Generator().manual_seed(0)
    x, ctx, pooled = torch.randn(1, 16, 8, 8, generator=gen), torch.randn(1, 20, 32, generator=gen), \
        torch.randn(1, 32, generator=gen)
    hint, sigma = torch.randn(1, 16, 8, 8, generator=gen), torch.tensor([0.6])
    t = sigma * 1000
    residuals = cnet.model.network.residuals(x, t, hint, ctx, pooled)
    assert len(residuals["output"]) == 3  # ComfyUI: 2 + 1 (the last MMDiT block takes none)
    ours = model.apply(x, t, ModelInputs(context=ctx, pooled=pooled, control=lambda *_: residuals))
    with torch.no_grad():
        blocks = reference(hidden_states=x, controlnet_cond=hint, encoder_hidden_states=ctx,
                           pooled_projections=torch.zeros_like(pooled), timestep=t, return_dict=False)[0]
        theirs = ref(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t,
                     block_controlnet_hidden_states=blocks, return_dict=False)[0]
        plain = ref(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t,
                    return_dict=False)[0]
    assert (theirs - plain).abs().max() > 1e-3
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_sd3_controlnet_runs_in_sampling_and_needs_a_vae(tmp_path):
    from comfykit.engine.models.checkpoint import load_checkpoint as load
    from comfykit.nodes.controlnet import ControlNetApplySD3

    model, clip, vae = load(demo.make_dit_checkpoint(tmp_path / "sd35.safetensors", "sd3", t5=False))
    cnet = load_controlnet(make_controlnet(tmp_path / "sd3_cnet", arch="sd3", layout="diffusers-folder", seed=1))
    cond, pooled = torch.randn(1, 20, 32), torch.randn(1, 32)
    pos, neg = [[cond, {"pooled_output": pooled}]], [[cond * 0, {"pooled_output": pooled * 0}]]
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    plain = common_ksampler(model, 1, 2, 3.0, "euler", "simple", pos, neg, latent)["samples"]
    cpos, cneg = ControlNetApplySD3().apply_controlnet(pos, neg, cnet, vae, _hint(0), 1.0, 0.0, 1.0)
    controlled = common_ksampler(model, 1, 2, 3.0, "euler", "simple", cpos, cneg, latent)["samples"]
    assert torch.isfinite(controlled).all() and (controlled - plain).abs().max() > 1e-4
    cpos, cneg = ControlNetApplyAdvanced().apply_controlnet(pos, neg, cnet, _hint(0), 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="needs a VAE"):
        common_ksampler(model, 1, 2, 3.0, "euler", "simple", cpos, cneg, latent)
    with pytest.raises(ModelError, match="SD3/SD3.5 ControlNet .* model is sd1"):
        _ours(load(demo.make_checkpoint(tmp_path / "sd1.safetensors"))[0], torch.randn(1, 77, 32),
              torch.randn(1, 77, 32), [(cnet, _hint(0), 1.0)], steps=1)
