"""FLUX.1 ControlNets (InstantX, Shakker-Labs Union-Pro, XLabs): the files users download, the same numbers as
diffusers' FluxControlNetModel + FluxTransformer2DModel and FluxControlNetPipeline, and ControlNetApplyAdvanced
steering a FLUX.1 graph on the engine."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from comfykit import demo  # noqa: E402
from comfykit.engine.models.checkpoint import load_diffusion_model, load_vae  # noqa: E402
from comfykit.engine.models.controlnet import load_controlnet  # noqa: E402
from comfykit.engine.models.controlnet_flux import MAIN_DOUBLE, spread  # noqa: E402
from comfykit.engine.models.flux import pack, unpack  # noqa: E402
from comfykit.engine.models.tiny_controlnet import flux_controlnet_to_xlabs, tiny_flux_controlnet  # noqa: E402
from comfykit.engine.models.tiny_dit import flux_diffusers_to_bfl, tiny_flux  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402


def _save(sd, path):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    """(our FLUX.1 dev model from a BFL file, diffusers' transformer with the same weights), demo-sized."""
    folder = tmp_path_factory.mktemp("flux")
    ref = tiny_flux(True, seed=3, joint_attention_dim=32, pooled_projection_dim=32).eval()
    model = load_diffusion_model(_save(flux_diffusers_to_bfl(ref.state_dict()), folder / "flux1-dev.safetensors"))
    return model, ref


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, 8, 8, generator=gen), torch.randn(1, 5, 32, generator=gen),
            torch.randn(1, 32, generator=gen))


@pytest.mark.parametrize("arch,layout,mode", [("flux-instantx", "diffusers", None), ("flux-union", "diffusers", 2),
                                              ("flux-union", "diffusers", None), ("flux-xlabs", "xlabs", None)])
def test_residuals_reach_the_transformer_as_diffusers_controlnet_gives_them(flux, tmp_path, arch, layout, mode):
    model, ref = flux
    cnet = load_controlnet(demo.make_controlnet(tmp_path / "cnet.safetensors", arch=arch, layout=layout, seed=4))
    theirs_net = tiny_flux_controlnet(arch, seed=4)
    x, context, pooled = _inputs()
    sigma, guidance = torch.tensor([0.7]), torch.tensor([2.5])
    xlabs = arch == "flux-xlabs"
    gen = torch.Generator().manual_seed(9)
    hint = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1 if xlabs else torch.randn(1, 16, 8, 8, generator=gen)

    net = cnet.model.network
    control = net.residuals(x, sigma, hint, context, pooled, guidance=guidance, mode=mode)
    assert len(control["input"]) == MAIN_DOUBLE
    ours = model.network(x, sigma, context, pooled, guidance=2.5, control=control)
    plain = model.network(x, sigma, context, pooled, guidance=2.5)

    packed, img_ids = pack(x)
    txt_ids = torch.zeros(5, 3)
    cond = hint if xlabs else pack(hint)[0]
    kwargs = dict(encoder_hidden_states=context, pooled_projections=pooled, timestep=sigma, guidance=guidance,
                  img_ids=img_ids, txt_ids=txt_ids, return_dict=False)
    with torch.no_grad():
        if mode is None and arch == "flux-union":
            theirs_net.union = False  # ComfyUI's "auto": no mode token (diffusers insists on one)
        blocks, singles = theirs_net(hidden_states=packed, controlnet_cond=cond, conditioning_scale=1.0,
                                     controlnet_mode=None if mode is None else torch.tensor([[mode]]), **kwargs)
        out = ref(hidden_states=packed, controlnet_block_samples=blocks, controlnet_single_block_samples=singles,
                  controlnet_blocks_repeat=xlabs, **kwargs)[0]
    theirs = unpack(out, 8, 8)
    assert (ours - plain).abs().max() > 1e-2  # the control matters
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_control_with_kontext_reference_latents_steers_only_the_image_tokens(flux, tmp_path):
    model, _ = flux
    cnet = load_controlnet(demo.make_controlnet(tmp_path / "c.safetensors", arch="flux-instantx", layout="diffusers"))
    x, context, pooled = _inputs(3)
    ref = torch.randn(1, 16, 6, 4, generator=torch.Generator().manual_seed(4))
    control = cnet.model.network.residuals(x, torch.tensor([0.5]), torch.randn(1, 16, 8, 8), context, pooled)
    call = lambda **kw: model.network(x, torch.tensor([0.5]), context, pooled, guidance=3.5, **kw)  # noqa: E731
    with_refs = call(ref_latents=[ref], control=control)
    assert with_refs.shape == x.shape and (with_refs - call(ref_latents=[ref])).abs().max() > 1e-2


def test_residuals_spread_over_flux1_blocks_as_diffusers_does_for_19_and_38():
    doubles = [torch.full((1,), float(i)) for i in range(5)]
    ours = [int(r) for r in spread(doubles, 19, cycle=False)]
    interval = -(-19 // 5)
    assert ours == [i // interval for i in range(19)]  # InstantX: runs of ceil(19/5), as diffusers' interval
    assert [int(r) for r in spread(doubles[:2], 19, cycle=True)] == [i % 2 for i in range(19)]  # XLabs: cycled


def test_xlabs_file_and_its_diffusers_conversion_load_the_same_network(tmp_path):
    theirs = tiny_flux_controlnet("flux-xlabs", seed=2)
    xlabs = load_controlnet(_save(flux_controlnet_to_xlabs(theirs.state_dict()), tmp_path / "canny-v3.safetensors"))
    theirs.save_pretrained(tmp_path / "diffusers")
    folder = load_controlnet(tmp_path / "diffusers")
    a, b = xlabs.model.network.net.state_dict(), folder.model.network.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "XLabs FLUX.1 ControlNet" in repr(xlabs.model)


def test_flux_controlnet_on_sd15_and_bad_flux_files_are_model_errors(tmp_path):
    from comfykit.engine.models.checkpoint import load_checkpoint

    model, _, _ = load_checkpoint(demo.make_checkpoint(tmp_path / "sd15.safetensors", arch="sd1"))
    cnet = load_controlnet(demo.make_controlnet(tmp_path / "c.safetensors", arch="flux-instantx", layout="diffusers"))
    with pytest.raises(ModelError, match="FLUX.1 ControlNet .* but the model is sd1"):
        cnet.with_hint(torch.rand(1, 3, 64, 64)).start(model, model.model_sampling)
    mistoline = {"controlnet_blocks.0.linear.weight": torch.zeros(2, 2), "double_blocks.0.img_in.weight": torch.zeros(1)}
    with pytest.raises(ModelError, match="MistoLine"):
        load_controlnet(_save(mistoline, tmp_path / "mistoline.safetensors"))
    sd = tiny_flux_controlnet("flux-instantx").state_dict()
    sd["controlnet_x_embedder.weight"] = torch.zeros(32, 68)  # 17 latent channels: an inpainting ControlNet
    with pytest.raises(ModelError, match="inpainting ControlNet"):
        load_controlnet(_save(sd, tmp_path / "alimama.safetensors"))


def _vae_pair(tmp_path):
    """A diffusers AutoencoderKL with FLUX.1's latent constants and a near-zero posterior spread (so diffusers'
    sampled encoding equals the mean comfykit takes), and comfykit's VAE from the same weights."""
    from comfykit.engine.models import keys
    from comfykit.engine.models.tiny_dit import randomize

    # the demo's 16-channel VAE shape (8x down, 32 norm groups as comfykit's LDM autoencoder)
    vae = randomize(diffusers.AutoencoderKL(
        block_out_channels=[32, 64, 64, 64], layers_per_block=1, latent_channels=16, norm_num_groups=32,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, use_quant_conv=False,
        use_post_quant_conv=False), seed=6)
    with torch.no_grad():
        vae.encoder.conv_out.weight[16:] = 0
        vae.encoder.conv_out.bias[16:] = -30.0
    vae.register_to_config(shift_factor=0.1159, scaling_factor=0.3611)
    ours = load_vae(_save(keys.vae_diffusers_to_ldm(vae.state_dict()), tmp_path / "ae.safetensors"))
    return vae, ours


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["flux-instantx", "flux-xlabs"])
def test_sampling_with_a_flux_controlnet_equals_flux_controlnet_pipeline(flux, tmp_path, arch):
    from comfykit.engine.sampling.ksampler import common_ksampler, prepare_noise, select_sigmas
    from comfykit.nodes.controlnet import ControlNetApplyAdvanced

    model, ref = flux
    xlabs = arch == "flux-xlabs"
    cnet = load_controlnet(demo.make_controlnet(tmp_path / "c.safetensors", arch=arch,
                                                layout="xlabs" if xlabs else "diffusers", seed=5))
    dvae, vae = _vae_pair(tmp_path)
    side = 8 * vae.downscale  # latent 8x8: the hint is the latent x the VAE's downscale (XLabs: x 8)
    image = torch.rand(1, side, side, 3, generator=torch.Generator().manual_seed(2))
    _, cond, pooled = _inputs(1)
    positive = [[cond, {"pooled_output": pooled, "guidance": 2.5}]]
    pos, neg = ControlNetApplyAdvanced().apply_controlnet(positive, positive, cnet, image, 0.8, 0.0, 1.0,
                                                          None if xlabs else vae)
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    seed, steps = 11, 3
    out = common_ksampler(model, seed, steps, 1.0, "euler", "simple", pos, neg, latent)
    ours = model.latent_format.process_in(out["samples"])
    plain = model.latent_format.process_in(
        common_ksampler(model, seed, steps, 1.0, "euler", "simple", positive, positive, latent)["samples"])

    sigmas = select_sigmas(model.model_sampling, "euler", "simple", steps)
    noise = prepare_noise(latent["samples"], seed) * sigmas[0]
    pipe = diffusers.FluxControlNetPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        vae=dvae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=ref, controlnet=tiny_flux_controlnet(arch, seed=5))
    pipe.set_progress_bar_config(disable=True)
    packed = pack(noise)[0]
    theirs = pipe(prompt_embeds=cond, pooled_prompt_embeds=pooled, latents=packed, height=side, width=side,
                  control_image=image.movedim(-1, 1) * 2 - 1, controlnet_conditioning_scale=0.8, sigmas=sigmas[:-1].tolist(),
                  num_inference_steps=steps, guidance_scale=2.5, output_type="latent",
                  generator=torch.Generator().manual_seed(0)).images
    theirs = unpack(theirs, 8, 8)
    assert (ours - plain).abs().max() > 1e-2
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-3)


# -- through the engine -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flux_engine(tmp_path_factory):
    """An engine with the demo FLUX.1 dev split files, an InstantX-style, a Union-Pro-style and an XLabs ControlNet."""
    import numpy as np
    from PIL import Image

    from comfykit.engine import Engine

    base = tmp_path_factory.mktemp("flux_cnet")
    models = base / "models"
    demo.make_dit_files(models, "flux-dev", names={"t5xxl": "t5xxl_fp16.safetensors"})
    demo.make_controlnet(models / "controlnet" / "flux-canny-controlnet.safetensors", arch="flux-instantx",
                         layout="diffusers", seed=1)
    demo.make_controlnet(models / "controlnet" / "FLUX.1-dev-ControlNet-Union-Pro", arch="flux-union",
                         layout="diffusers-folder", seed=2)
    demo.make_controlnet(models / "controlnet" / "flux-depth-controlnet-v3.safetensors", arch="flux-xlabs",
                         layout="xlabs", seed=3)
    demo.make_controlnet(models / "controlnet" / "control_sd15_tiny.pth", arch="sd1", layout="ldm-pth", seed=4)
    (base / "input").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(base / "input" / "edges.png")
    eng = Engine(models, output_dir=base / "output", input_dir=base / "input", temp_dir=base / "temp",
                 device="cpu", previews="none")
    yield eng
    eng.shutdown()


def flux_controlnet_graph(controls=(("flux-canny-controlnet.safetensors", 0.8, None),)):
    """A FLUX.1 dev text-to-image graph with each (file, strength, union type) applied in turn."""
    n = lambda cls, **inputs: {"class_type": cls, "inputs": inputs}  # noqa: E731
    graph = {
        "1": n("UNETLoader", unet_name="flux1-dev.safetensors", weight_dtype="default"),
        "2": n("DualCLIPLoader", clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors", type="flux"),
        "3": n("VAELoader", vae_name="ae.safetensors"),
        "4": n("CLIPTextEncode", clip=["2", 0], text="a house, clean lines"),
        "5": n("FluxGuidance", conditioning=["4", 0], guidance=3.5),
        "6": n("ConditioningZeroOut", conditioning=["4", 0]),
        "7": n("LoadImage", image="edges.png"),
        "8": n("EmptySD3LatentImage", width=64, height=48, batch_size=1),
    }
    pos, neg = ["5", 0], ["6", 0]
    for i, (name, strength, union) in enumerate(controls):
        loader, apply = f"{20 + 3 * i}", f"{21 + 3 * i}"
        graph[loader] = n("ControlNetLoader", control_net_name=name)
        cnet = [loader, 0]
        if union is not None:
            graph[f"{22 + 3 * i}"] = n("SetUnionControlNetType", control_net=cnet, type=union)
            cnet = [f"{22 + 3 * i}", 0]
        graph[apply] = n("ControlNetApplyAdvanced", positive=pos, negative=neg, control_net=cnet, image=["7", 0],
                         strength=strength, start_percent=0.0, end_percent=1.0, vae=["3", 0])
        pos, neg = [apply, 0], [apply, 1]
    graph.update({
        "9": n("KSampler", model=["1", 0], seed=5, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple",
               positive=pos, negative=neg, latent_image=["8", 0], denoise=1.0),
        "10": n("VAEDecode", samples=["9", 0], vae=["3", 0]),
        "11": n("PreviewImage", images=["10", 0]),
    })
    return graph


def _pixels(result):
    import numpy as np

    assert result.ok, result.error
    return np.asarray(result.images_by_node["11"][0], dtype=np.int16)


@pytest.mark.slow
def test_flux_graph_with_stacked_controlnets_runs_and_changes_the_picture(flux_engine):
    plain = _pixels(flux_engine.execute(flux_controlnet_graph(()), prompt_id="plain"))
    stacked = (("flux-canny-controlnet.safetensors", 0.8, None),
               ("FLUX.1-dev-ControlNet-Union-Pro/diffusion_pytorch_model.safetensors", 0.7, "depth"),
               ("flux-depth-controlnet-v3.safetensors", 0.6, None))
    controlled = _pixels(flux_engine.execute(flux_controlnet_graph(stacked), prompt_id="stacked"))
    assert controlled.shape == (48, 64, 3) and abs(controlled - plain).max() > 0
    other_mode = stacked[:1] + (stacked[1][:2] + ("openpose",),) + stacked[2:]
    changed = _pixels(flux_engine.execute(flux_controlnet_graph(other_mode), prompt_id="mode"))
    assert abs(changed - controlled).max() > 0  # the union's mode token matters
    zero = _pixels(flux_engine.execute(flux_controlnet_graph([(s[0], 0.0, s[2]) for s in stacked]), prompt_id="0"))
    assert (zero == plain).all()  # strength 0 is no control at all


def test_strength_zero_controlnet_leaves_the_latents_unchanged(flux, tmp_path):
    from comfykit.engine.sampling.ksampler import common_ksampler

    model, _ = flux
    cnet = load_controlnet(demo.make_controlnet(tmp_path / "x.safetensors", arch="flux-xlabs", layout="xlabs"))
    _, cond, pooled = _inputs(2)
    plain = [[cond, {"pooled_output": pooled}]]
    zero = [[cond, {"pooled_output": pooled, "control": cnet.with_hint(torch.rand(1, 3, 64, 64), strength=0.0)}]]
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    a = common_ksampler(model, 1, 2, 1.0, "euler", "simple", plain, plain, latent)["samples"]
    b = common_ksampler(model, 1, 2, 1.0, "euler", "simple", zero, zero, latent)["samples"]
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_wrong_family_controlnets_fail_naming_the_file(flux_engine):
    result = flux_engine.execute(flux_controlnet_graph((("control_sd15_tiny.pth", 1.0, None),)), prompt_id="sd")
    assert result.status == "error"
    message = result.error.data["exception_message"]
    assert "control_sd15_tiny.pth" in message and "SD1.x ControlNet" in message and "flux" in message
    no_vae = flux_controlnet_graph()
    del no_vae["21"]["inputs"]["vae"]  # InstantX-style ControlNets encode their hint with the VAE
    result = flux_engine.execute(no_vae, prompt_id="novae")
    assert result.status == "error" and "needs a VAE" in result.error.data["exception_message"]
