"""End to end against diffusers' own pipelines: the same tiny weights, noise and sigmas give the same latents.

comfykit loads the transformer from the layouts users download (BFL's FLUX.1 file, Stability's SD3.5 single
file) through its own family code; diffusers loads the same weights from a diffusers folder. Both then sample:
comfykit through KSampler's path (noise, CFG, euler, flow schedule), diffusers through FluxPipeline /
StableDiffusion3Pipeline with the text embeddings, initial latents and sigmas handed in.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from comfykit.engine.models.checkpoint import load_diffusion_model  # noqa: E402
from comfykit.engine.models.tiny_dit import flux_diffusers_to_bfl, sd3_diffusers_to_sai, tiny_flux, tiny_sd3  # noqa: E402
from comfykit.engine.sampling.ksampler import common_ksampler, prepare_noise, select_sigmas  # noqa: E402


def _save(sd, path):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _scheduler():
    # sigmas are handed in already shifted (ComfyUI's), so the pipeline's own shift must be the identity
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)


@pytest.mark.parametrize("guidance", [False, True], ids=["schnell", "dev"])
def test_flux_graph_equals_flux_pipeline(tmp_path, guidance):
    ref = tiny_flux(guidance, seed=3, joint_attention_dim=32, pooled_projection_dim=32).eval()
    ref.save_pretrained(tmp_path / "transformer")
    reference = diffusers.FluxTransformer2DModel.from_pretrained(tmp_path / "transformer").eval()
    model = load_diffusion_model(_save(flux_diffusers_to_bfl(ref.state_dict()), tmp_path / "flux1.safetensors"))

    gen = torch.Generator().manual_seed(0)
    cond, pooled = torch.randn(1, 12, 32, generator=gen), torch.randn(1, 32, generator=gen)
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    seed, steps = 11, 3
    positive = [[cond, {"pooled_output": pooled, "guidance": 2.5}]]
    out = common_ksampler(model, seed, steps, 1.0, "euler", "simple", positive, positive, latent)
    ours = model.latent_format.process_in(out["samples"])

    sigmas = select_sigmas(model.model_sampling, "euler", "simple", steps)
    noise = prepare_noise(latent["samples"], seed) * sigmas[0]
    packed = noise.reshape(1, 16, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 16, 64)
    pipe = diffusers.FluxPipeline(scheduler=_scheduler(), vae=None, text_encoder=None, tokenizer=None,
                                  text_encoder_2=None, tokenizer_2=None, transformer=reference)
    theirs = pipe(prompt_embeds=cond, pooled_prompt_embeds=pooled, latents=packed, height=64, width=64,
                  sigmas=sigmas[:-1].tolist(), num_inference_steps=steps, guidance_scale=2.5,
                  output_type="latent").images
    theirs = theirs.reshape(1, 4, 4, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, 8, 8)
    assert torch.isfinite(ours).all() and ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-3)


def test_sd3_graph_equals_sd3_pipeline_with_cfg(tmp_path):
    ref = tiny_sd3(seed=5, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32).eval()
    ref.save_pretrained(tmp_path / "transformer")
    reference = diffusers.SD3Transformer2DModel.from_pretrained(tmp_path / "transformer").eval()
    model = load_diffusion_model(_save(sd3_diffusers_to_sai(ref.state_dict()), tmp_path / "sd35.safetensors"))

    gen = torch.Generator().manual_seed(1)
    cond, pooled = torch.randn(1, 20, 32, generator=gen), torch.randn(1, 32, generator=gen)
    uncond, upooled = torch.randn(1, 20, 32, generator=gen), torch.randn(1, 32, generator=gen)
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    seed, steps, cfg = 4, 3, 4.5
    out = common_ksampler(model, seed, steps, cfg, "euler", "simple", [[cond, {"pooled_output": pooled}]],
                          [[uncond, {"pooled_output": upooled}]], latent)
    ours = model.latent_format.process_in(out["samples"])

    sigmas = select_sigmas(model.model_sampling, "euler", "simple", steps)
    noise = prepare_noise(latent["samples"], seed) * sigmas[0]
    pipe = diffusers.StableDiffusion3Pipeline(transformer=reference, scheduler=_scheduler(), vae=None,
                                              text_encoder=None, tokenizer=None, text_encoder_2=None,
                                              tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    theirs = pipe(prompt_embeds=cond, pooled_prompt_embeds=pooled, negative_prompt_embeds=uncond,
                  negative_pooled_prompt_embeds=upooled, latents=noise, height=64, width=64,
                  sigmas=sigmas[:-1].tolist(), num_inference_steps=steps, guidance_scale=cfg,
                  output_type="latent").images
    assert torch.isfinite(ours).all() and ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-3)
