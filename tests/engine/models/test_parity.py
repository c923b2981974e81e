"""Our UNet/VAE/CLIP against independent implementations (diffusers, transformers) on the same random weights.

Each test builds a tiny diffusers/transformers model, converts its state dict to the original checkpoint layout
with our key converter, writes a single-file checkpoint, loads it with `load_checkpoint`, and compares outputs.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

from comfykit.engine.models import keys, load_checkpoint  # noqa: E402
from comfykit.engine.models.tokenizer import get_tokenizer  # noqa: E402

W = 32  # text width = cross-attention dim


def _seeded(fn, seed):
    torch.manual_seed(seed)
    model = fn().eval()
    with torch.no_grad():  # norms start at 1/0 and biases may start at 0: randomise so every weight matters
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.05)
    return model


def _vae():
    return _seeded(lambda: diffusers.AutoencoderKL(
        block_out_channels=[32, 64, 64, 64], layers_per_block=1, latent_channels=4, norm_num_groups=32,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4), 1)


def _clip(act="quick_gelu", proj=False, seed=2):
    cfg = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=W, intermediate_size=64, num_attention_heads=2,
                                      num_hidden_layers=3, hidden_act=act, projection_dim=W,
                                      bos_token_id=49406, eos_token_id=49407)
    cls = transformers.CLIPTextModelWithProjection if proj else transformers.CLIPTextModel
    return _seeded(lambda: cls(cfg), seed)


def _hf(model) -> dict:
    return keys.hf_clip_keys(model.state_dict())


def _ids(text, pad):
    ids = get_tokenizer()(text)
    return torch.tensor([ids + [pad] * (77 - len(ids))]), len(ids) - 1


@pytest.fixture(scope="module")
def sd1_pair(tmp_path_factory):
    unet = _seeded(lambda: diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=W, attention_head_dim=8,
        norm_num_groups=32, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), sample_size=8), 0)
    vae, clip = _vae(), _clip()
    sd = {"model.diffusion_model." + k: v for k, v in keys.unet_diffusers_to_ldm(unet.state_dict()).items()}
    sd.update({"first_stage_model." + k: v for k, v in keys.vae_diffusers_to_ldm(vae.state_dict()).items()})
    # transformers >= 5.6 state dicts are flat (no text_model.): write them as found in the wild
    sd.update({"cond_stage_model.transformer." + k: v for k, v in clip.state_dict().items()})
    path = tmp_path_factory.mktemp("parity") / "sd1.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return (unet, vae, clip), load_checkpoint(path)


def test_sd1_unet_matches_diffusers(sd1_pair):
    (unet, _, _), (model, _, _) = sd1_pair
    assert model.arch == "sd1" and model.prediction == "eps"
    assert model.config.channel_mult == (1, 2) and model.config.num_res_blocks == (1, 1)
    torch.manual_seed(0)
    x, ctx, t = torch.randn(2, 4, 16, 16), torch.randn(2, 77, W), torch.tensor([999.0, 10.5])
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ctx).sample
    out = model(x, t, ctx)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_vae_matches_diffusers(sd1_pair):
    (_, vae, _), (_, _, ours) = sd1_pair
    torch.manual_seed(0)
    images = torch.rand(1, 64, 64, 3)
    with torch.no_grad():
        ref_latent = vae.encode(images.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
        ref_pixels = vae.decode(ref_latent).sample
    latent = ours.encode(images)
    assert latent.shape == (1, 4, 8, 8)
    torch.testing.assert_close(latent, ref_latent, atol=1e-4, rtol=1e-4)
    decoded = ours.decode(latent)
    assert decoded.shape == (1, 64, 64, 3) and decoded.min() >= 0 and decoded.max() <= 1
    torch.testing.assert_close(decoded, ((ref_pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


def test_sd1_text_encoder_matches_transformers(sd1_pair):
    (_, _, clip), (_, te, _) = sd1_pair
    ids, eos = _ids("a photo of a cat", 49407)
    with torch.no_grad():
        ref = clip(ids, output_hidden_states=True)
    cond, pooled = te.encode("a photo of a cat")
    assert cond.shape == (1, 77, W)
    torch.testing.assert_close(cond, ref.last_hidden_state, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=1e-4, rtol=1e-4)
    # CLIPSetLastLayer(-2): penultimate hidden state through the final layer norm; the original is untouched
    penultimate = te.clone().set_last_layer(-2).encode("a photo of a cat")[0]
    expected = clip.text_model.final_layer_norm(ref.hidden_states[-2]) if hasattr(clip, "text_model") \
        else clip.final_layer_norm(ref.hidden_states[-2])
    torch.testing.assert_close(penultimate, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(te.encode("a photo of a cat")[0], cond)


def test_sdxl_matches_diffusers_and_transformers(tmp_path):
    pooled_dim = W
    unet = _seeded(lambda: diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=(1, 2), cross_attention_dim=2 * W, attention_head_dim=(1, 1),
        norm_num_groups=32, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=pooled_dim + 6 * 256, sample_size=8), 3)
    clip_l, clip_g = _clip(seed=4), _clip("gelu", proj=True, seed=5)
    sd = {"model.diffusion_model." + k: v for k, v in keys.unet_diffusers_to_ldm(unet.state_dict()).items()}
    sd.update({"first_stage_model." + k: v for k, v in keys.vae_diffusers_to_ldm(_vae().state_dict()).items()})
    sd.update({"conditioner.embedders.0.transformer." + k: v for k, v in _hf(clip_l).items()})
    sd.update({"conditioner.embedders.1.model." + k: v for k, v in keys.hf_to_openclip(_hf(clip_g), 3).items()})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "xl.safetensors"))
    model, te, _ = load_checkpoint(tmp_path / "xl.safetensors")
    assert model.arch == "sdxl" and model.config.num_res_blocks == (1, 2)
    assert model.config.transformer_depth == (0, 2) and model.config.use_linear

    cond, pooled = te.encode("a photo of a cat")
    ids_l, _ = _ids("a photo of a cat", 49407)
    ids_g, _ = _ids("a photo of a cat", 0)
    with torch.no_grad():
        ref_l = clip_l(ids_l, output_hidden_states=True)
        ref_g = clip_g(ids_g, output_hidden_states=True)
    # SDXL reads the penultimate layers without the final norm, concatenated, and pools clip_g via text_projection
    torch.testing.assert_close(cond, torch.cat([ref_l.hidden_states[-2], ref_g.hidden_states[-2]], -1),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pooled, ref_g.text_embeds, atol=1e-4, rtol=1e-4)

    y = model.encode_adm(pooled, width=96, height=64, crop_w=8, crop_h=4)
    assert y.shape == (1, pooled_dim + 6 * 256)
    torch.manual_seed(0)
    x, t = torch.randn(1, 4, 8, 12), torch.tensor([500.0])
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=cond, added_cond_kwargs={
            "text_embeds": pooled, "time_ids": torch.tensor([[64.0, 96.0, 4.0, 8.0, 64.0, 96.0]])}).sample
    torch.testing.assert_close(model(x, t, cond, y), ref, atol=1e-4, rtol=1e-4)


def test_sd2_openclip_text_encoder_matches_transformers(make_ckpt, tmp_path):
    """SD2 keeps OpenCLIP's fused in_proj layout; after conversion it must equal the HF model (gelu, pad 0)."""
    from comfykit import demo

    clip_h = _clip("gelu", proj=True, seed=6)
    sd = {k: v for k, v in load_file_dict(make_ckpt("sd2")).items() if not k.startswith("cond_stage_model.")}
    sd.update({"cond_stage_model.model." + k: v for k, v in keys.hf_to_openclip(_hf(clip_h), 3).items()})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "sd2.safetensors"))
    model, te, _ = load_checkpoint(tmp_path / "sd2.safetensors")
    assert model.arch == "sd2" and model.config.use_linear
    ids, _ = _ids("a photo of a cat", 0)
    with torch.no_grad():
        ref = clip_h(ids, output_hidden_states=True)
    cond, pooled = te.encode("a photo of a cat")
    final_norm = clip_h.text_model.final_layer_norm if hasattr(clip_h, "text_model") else clip_h.final_layer_norm
    with torch.no_grad():  # SD2 reads the penultimate layer through the final layer norm
        torch.testing.assert_close(cond, final_norm(ref.hidden_states[-2]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pooled, ref.text_embeds, atol=1e-4, rtol=1e-4)
    assert demo.ARCHES  # the demo module is importable without diffusers


def load_file_dict(path):
    from safetensors.torch import load_file

    return load_file(str(path))
