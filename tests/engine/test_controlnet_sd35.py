"""Stability's SD3.5 ControlNets (canny, depth, blur): the files load, steer sampling as ComfyUI's do, and ComfyUI's
SD3.5 ControlNet templates run end to end on tiny files of the same layouts.

Parity is checked against diffusers' networks (``SD3ControlNetModel`` in its single-stream form, the converter's
key mapping, and ``SD3Transformer2DModel`` with block residuals). diffusers' StableDiffusion3ControlNetPipeline
itself is not compared end to end because ComfyUI, which we follow, differs from it on purpose in three places:
the ControlNet's tokens get ComfyUI's fresh 0..15 sin-cos grid (the pipeline uses the transformer's cropped table),
the last MMDiT block gets a residual too (the pipeline skips it), and canny/depth hints are preprocessed by control
type (``a * 127.5 + 0.5`` / ``1 - a``). Each difference is asserted below.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from comfykit import demo  # noqa: E402
from comfykit.engine.models.controlnet import detect_controlnet, load_controlnet  # noqa: E402
from comfykit.engine.models.controlnet_sd35 import sd35_diffusers_to_sai as to_sai  # noqa: E402
from comfykit.engine.models.controlnet_sd35 import sd35_sai_to_diffusers as to_diffusers  # noqa: E402
from comfykit.engine.models.controlnet_sd35 import sincos_grid  # noqa: E402
from comfykit.engine.models.tiny_controlnet import make_controlnet, tiny_sd35_controlnet  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402


def _inputs(seed=0, width=32, pooled=32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, 8, 8, generator=gen), torch.randn(1, 20, width, generator=gen),
            torch.randn(1, pooled, generator=gen), torch.randn(1, 16, 8, 8, generator=gen))


def test_stability_layout_loads_with_the_converter_mapping_and_control_type(tmp_path):
    from safetensors.torch import load_file

    path = make_controlnet(tmp_path / "sd3.5_large_controlnet_depth.safetensors", arch="sd3.5-sai", seed=3)
    sd = load_file(path)
    assert detect_controlnet(sd) == "sd3-sai"
    assert "transformer_blocks.0.attn.qkv.weight" in sd and not any(k.startswith("pos_embed.") for k in sd)
    assert float(sd["control_type"]) == 2.0
    # the inverse used to write files, then the forward mapping, gives diffusers' tensors back exactly
    reference = tiny_sd35_controlnet(seed=3).state_dict()
    converted, control_type = to_diffusers(to_sai(reference, 1))
    assert control_type == 1 and converted.keys() == reference.keys()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)
    cnet = load_controlnet(path)
    assert "Stability SD3.5 ControlNet (depth, 1 blocks, width 32)" in repr(cnet.model)


def test_sincos_grid_is_comfyuis_span_not_the_models_table():
    grid = sincos_grid(8, 2, 4)  # 2 rows, 4 columns: rows span 0..15, columns twice as wide, w half first
    assert grid.shape == (8, 8)
    pos_w = torch.linspace(7.5 - 15, 7.5 + 15, 4)
    pos_h = torch.linspace(0, 15, 2)
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    expect_first = torch.cat([torch.sin(pos_w[0] * omega), torch.cos(pos_w[0] * omega),
                              torch.sin(pos_h[0] * omega), torch.cos(pos_h[0] * omega)]).float()
    torch.testing.assert_close(grid[0], expect_first)
    expect_last_h = torch.cat([torch.sin(pos_h[1] * omega), torch.cos(pos_h[1] * omega)]).float()
    torch.testing.assert_close(grid[-1, 4:], expect_last_h)


def _sd35_and_blur_controlnet(tmp_path, blocks: int):
    """A tiny SD3.5 MMDiT of ``blocks`` blocks (diffusers' and loaded from Stability's layout) and a 2-block blur
    ControlNet (diffusers' and loaded from Stability's layout)."""
    from safetensors.torch import save_file

    from comfykit.engine.models.checkpoint import load_diffusion_model
    from comfykit.engine.models.tiny_dit import sd3_diffusers_to_sai, tiny_sd3

    ref = tiny_sd3(seed=5, num_layers=blocks, pooled_projection_dim=32)
    save_file({k: v.contiguous() for k, v in sd3_diffusers_to_sai(ref.state_dict()).items()},
              str(tmp_path / "sd35.safetensors"))
    model = load_diffusion_model(tmp_path / "sd35.safetensors")
    reference = tiny_sd35_controlnet(seed=6, num_layers=2)
    save_file({k: v.contiguous() for k, v in to_sai(reference.state_dict(), 0).items()},
              str(tmp_path / "sd3.5_large_controlnet_blur.safetensors"))
    return ref, model, reference, load_controlnet(tmp_path / "sd3.5_large_controlnet_blur.safetensors")


def test_residuals_and_model_output_equal_diffusers_networks(tmp_path):

    from comfykit.engine.models.family import ModelInputs

    # a 3-block MMDiT steered by a 2-block ControlNet: ComfyUI repeats each residual ceil(3 / 2) = 2 times and the
    # last MMDiT block takes one too
    ref, model, reference, cnet = _sd35_and_blur_controlnet(tmp_path, 3)
    net = cnet.model.network
    net.check(model, "blur")  # a run start: borrows the model's patch embedding and block count

    x, ctx, pooled, hint = _inputs()
    t = torch.tensor([0.6]) * 1000
    residuals = net.residuals(x, t, hint, ctx, pooled)["output"]
    assert len(residuals) == 4
    with torch.no_grad():
        tokens = ref.pos_embed.proj(x).flatten(2).transpose(1, 2) + sincos_grid(32, 4, 4)
        blocks = reference(hidden_states=tokens, controlnet_cond=hint, pooled_projections=pooled, timestep=t,
                           return_dict=False)[0]
    for i, r in enumerate(residuals):
        torch.testing.assert_close(r, blocks[i // 2], atol=1e-5, rtol=1e-5)
    # the pooled text reaches the ControlNet (ComfyUI does not zero it for these files); without one (a
    # conditioning with no pooled_output) ComfyUI embeds the timestep alone
    zeroed = net.residuals(x, t, hint, ctx, torch.zeros_like(pooled))["output"]
    assert (zeroed[0] - residuals[0]).abs().max() > 1e-4
    without = net.residuals(x, t, hint, ctx, None)["output"]
    no_text = reference.time_text_embed.text_embedder.register_forward_hook(lambda m, a, out: out * 0)
    with torch.no_grad():
        time_only = reference(hidden_states=tokens, controlnet_cond=hint, pooled_projections=pooled, timestep=t,
                              return_dict=False)[0]
    no_text.remove()
    torch.testing.assert_close(without[-1], time_only[-1], atol=1e-5, rtol=1e-5)

    ours = model.apply(x, t, ModelInputs(context=ctx, pooled=pooled, control=lambda *_: {"output": residuals}))
    hook = ref.transformer_blocks[-1].register_forward_hook(lambda m, a, out: (out[0], out[1] + residuals[2]))
    with torch.no_grad():
        theirs = ref(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t,
                     block_controlnet_hidden_states=residuals[:3], return_dict=False)[0]
        hook.remove()
        skipping_last = ref(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t,
                            block_controlnet_hidden_states=residuals[:3], return_dict=False)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert (ours - skipping_last).abs().max() > 1e-4  # diffusers' transformer alone leaves the last block out


class _ComfyPositions(torch.nn.Module):
    """The transformer's patch projection plus ComfyUI's grid: what the ControlNet's tokens are in ComfyUI."""

    def __init__(self, proj):
        super().__init__()
        self.proj = proj

    def forward(self, latent):
        tokens = self.proj(latent).flatten(2).transpose(1, 2)
        return tokens + sincos_grid(tokens.shape[-1], latent.shape[-2] // 2, latent.shape[-1] // 2)


@pytest.mark.slow  # importing the pipeline pulls in transformers' vision models: ~20 s here
def test_sampling_equals_diffusers_sd3_controlnet_pipeline_with_comfyuis_differences(tmp_path, monkeypatch):
    """KSampler + ControlNetApplyAdvanced against StableDiffusion3ControlNetPipeline on the same tiny weights, noise,
    sigmas and blur hint, the pipeline given ComfyUI's three deliberate differences: the ControlNet's positions
    (ComfyUI's grid, not the transformer's table), a residual on the last MMDiT block, and the posterior mean of
    the hint's encoding (the pipeline samples it)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from safetensors.torch import save_file

    from comfykit.engine.models.checkpoint import load_vae
    from comfykit.engine.models.keys import vae_diffusers_to_ldm
    from comfykit.engine.models.tiny_dit import randomize
    from comfykit.engine.sampling.ksampler import common_ksampler, prepare_noise, select_sigmas
    from comfykit.engine.sampling.latent_formats import SD3
    from comfykit.nodes.controlnet import ControlNetApplyAdvanced

    ref, model, reference, cnet = _sd35_and_blur_controlnet(tmp_path, 4)
    # tiny_vae16's shape, with SD3's shift and scale in its config: the pipeline reads them from there
    dvae = randomize(diffusers.AutoencoderKL(
        block_out_channels=[32, 32], layers_per_block=1, latent_channels=16, norm_num_groups=32,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=SD3.shift_factor, scaling_factor=SD3.scale_factor), 2)
    save_file({k: v.contiguous() for k, v in vae_diffusers_to_ldm(dvae.state_dict()).items()},
              str(tmp_path / "vae.safetensors"))
    vae = load_vae(tmp_path / "vae.safetensors")

    gen = torch.Generator().manual_seed(1)
    cond, pooled = torch.randn(1, 20, 32, generator=gen), torch.randn(1, 32, generator=gen)
    uncond, upooled = torch.randn(1, 20, 32, generator=gen), torch.randn(1, 32, generator=gen)
    size = 8 * vae.downscale  # the hint at the decoded size: neither side resizes it
    hint = torch.rand(1, size, size, 3, generator=gen)
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    seed, steps, cfg = 4, 3, 4.5
    pos, neg = ControlNetApplyAdvanced().apply_controlnet(
        [[cond, {"pooled_output": pooled}]], [[uncond, {"pooled_output": upooled}]], cnet, hint, 1.0, 0.0, 1.0,
        vae=vae)
    ours = model.latent_format.process_in(common_ksampler(model, seed, steps, cfg, "euler", "simple", pos, neg,
                                                          latent)["samples"])

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    sigmas = select_sigmas(model.model_sampling, "euler", "simple", steps)
    noise = prepare_noise(latent["samples"], seed) * sigmas[0]
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = diffusers.StableDiffusion3ControlNetPipeline(
        transformer=ref, scheduler=scheduler, vae=dvae, text_encoder=None, tokenizer=None, text_encoder_2=None,
        tokenizer_2=None, text_encoder_3=None, tokenizer_3=None, controlnet=reference)
    reference.pos_embed = _ComfyPositions(ref.pos_embed.proj)
    given = {}
    ref.register_forward_pre_hook(lambda m, a, kw: given.update(kw), with_kwargs=True)
    ref.transformer_blocks[-1].register_forward_hook(
        lambda m, a, out: (out[0], out[1] + given["block_controlnet_hidden_states"][-1]))
    theirs = pipe(prompt_embeds=cond, pooled_prompt_embeds=pooled, negative_prompt_embeds=uncond,
                  negative_pooled_prompt_embeds=upooled, latents=noise, height=size, width=size,
                  control_image=hint.movedim(-1, 1) * 2 - 1, controlnet_conditioning_scale=1.0,
                  sigmas=sigmas[:-1].tolist(), num_inference_steps=steps, guidance_scale=cfg,
                  output_type="latent").images
    plain = model.latent_format.process_in(common_ksampler(
        model, seed, steps, cfg, "euler", "simple", [[cond, {"pooled_output": pooled}]],
        [[uncond, {"pooled_output": upooled}]], latent)["samples"])
    assert (ours - plain).abs().max() > 1e-3
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-3)


def test_hint_is_preprocessed_by_control_type_and_encoded_with_the_shift(tmp_path):
    from comfykit.engine.models.checkpoint import load_checkpoint
    from comfykit.engine.sampling.latent_formats import SD3

    model, _, vae = load_checkpoint(demo.make_dit_checkpoint(tmp_path / "sd35.safetensors", "sd3", t5=False))
    nets = {kind: load_controlnet(make_controlnet(tmp_path / f"sd3.5_large_controlnet_{kind}.safetensors",
                                                  arch="sd3.5-sai")) for kind in ("blur", "canny", "depth")}
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    def prepared(kind, hint):
        applied = nets[kind].with_hint(hint, vae=vae)
        return nets[kind].model.network.prepare_hint(hint, applied, model)

    blur = prepared("blur", image)
    torch.testing.assert_close(blur, (vae.encode(image.movedim(1, -1)) - SD3.shift_factor) * SD3.scale_factor)
    torch.testing.assert_close(prepared("depth", image), prepared("blur", 1.0 - image))
    torch.testing.assert_close(prepared("canny", image), prepared("blur", image * 127.5 + 0.5))


def test_sampling_with_controlnet_apply_advanced_and_apply_sd3(tmp_path):
    from comfykit.engine.models.checkpoint import load_checkpoint
    from comfykit.engine.sampling.ksampler import common_ksampler
    from comfykit.nodes.controlnet import ControlNetApplyAdvanced, ControlNetApplySD3

    model, _, vae = load_checkpoint(demo.make_dit_checkpoint(tmp_path / "sd35.safetensors", "sd3", t5=False))
    cnet = load_controlnet(make_controlnet(tmp_path / "sd3.5_large_controlnet_canny.safetensors", arch="sd3.5-sai"))
    cond, pooled = torch.randn(1, 20, 32), torch.randn(1, 32)
    pos, neg = [[cond, {"pooled_output": pooled}]], [[cond * 0, {"pooled_output": pooled * 0}]]
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))

    def sample(p, n):
        return common_ksampler(model, 1, 2, 3.0, "euler", "simple", p, n, latent)["samples"]

    plain = sample(pos, neg)
    advanced = sample(*ControlNetApplyAdvanced().apply_controlnet(pos, neg, cnet, hint, 0.7, 0.0, 1.0, vae=vae))
    sd3 = sample(*ControlNetApplySD3().apply_controlnet(pos, neg, cnet, vae, hint, 0.7, 0.0, 1.0))
    assert torch.isfinite(advanced).all() and (advanced - plain).abs().max() > 1e-4
    torch.testing.assert_close(sd3, advanced)  # the same path in ComfyUI: ControlNetApplySD3 only makes vae required
    off = sample(*ControlNetApplyAdvanced().apply_controlnet(pos, neg, cnet, hint, 0.0, 0.0, 1.0, vae=vae))
    torch.testing.assert_close(off, plain)
    with pytest.raises(ValueError, match="needs a VAE"):
        sample(*ControlNetApplyAdvanced().apply_controlnet(pos, neg, cnet, hint, 0.7, 0.0, 1.0))


def test_sd35_controlnet_on_an_sd15_model_is_a_model_error_naming_the_file(tmp_path):
    from comfykit.engine.models.checkpoint import load_checkpoint
    from comfykit.engine.sampling.ksampler import common_ksampler
    from comfykit.nodes.controlnet import ControlNetApplyAdvanced

    model = load_checkpoint(demo.make_checkpoint(tmp_path / "sd15.safetensors"))[0]
    cnet = load_controlnet(make_controlnet(tmp_path / "sd3.5_large_controlnet_canny.safetensors", arch="sd3.5-sai"))
    pos, neg = [[torch.randn(1, 77, 32), {}]], [[torch.randn(1, 77, 32), {}]]
    pos, neg = ControlNetApplyAdvanced().apply_controlnet(pos, neg, cnet, torch.rand(1, 64, 64, 3), 1.0, 0.0, 1.0)
    with pytest.raises(ModelError, match=r"sd3\.5_large_controlnet_canny\.safetensors: this is a Stability SD3\.5 "
                                         r"ControlNet \(canny.* but the model is sd1"):
        common_ksampler(model, 1, 1, 1.0, "euler", "simple", pos, neg, {"samples": torch.zeros(1, 4, 8, 8)})
