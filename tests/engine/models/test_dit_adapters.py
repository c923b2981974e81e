"""FluxModel / SD3Model: ComfyUI's model contract on top of the diffusers transformers.

References are hand-written calls of the diffusers module with inputs prepared the way diffusers' own pipelines
prepare them (FluxPipeline / FluxKontextPipeline packing and ids, SD3's timestep x 1000).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusers import FluxKontextPipeline, FluxPipeline  # noqa: E402

from comfykit.engine.models import tiny_dit  # noqa: E402
from comfykit.engine.models.flux import FluxModel, flux_concat, load_flux, pack, reference_ids, unpack  # noqa: E402
from comfykit.engine.models.sd3 import SD3Model, load_sd3  # noqa: E402

B, H, W = 2, 8, 6  # latent batch and size (a 64x48 image)


@pytest.fixture(scope="module")
def dev():
    return FluxModel(tiny_dit.tiny_flux(guidance=True, seed=11))


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(B, 16, H, W, generator=g), "sigma": torch.tensor([0.8, 0.4]),
            "context": torch.randn(B, 5, 32, generator=g), "pooled": torch.randn(B, 24, generator=g)}


def _pipeline_call(model, x, sigma, context, pooled, guidance=None, extra_tokens=None, extra_ids=None):
    """The transformer called as FluxPipeline calls it, unpacked back to [B,16,h,w]."""
    b, c, h, w = x.shape
    tokens = FluxPipeline._pack_latents(x, b, c, h, w)
    ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
    n = tokens.shape[1]
    if extra_tokens is not None:
        tokens, ids = torch.cat([tokens, extra_tokens], dim=1), torch.cat([ids, extra_ids], dim=0)
    with torch.no_grad():
        out = model(hidden_states=tokens, timestep=sigma, guidance=guidance, pooled_projections=pooled,
                    encoder_hidden_states=context, txt_ids=torch.zeros(context.shape[1], 3), img_ids=ids,
                    return_dict=False)[0]
    return FluxPipeline._unpack_latents(out[:, :n], h * 8, w * 8, 8)


def test_flux_output_is_the_pipeline_call_with_sigma_and_plain_guidance(dev, inputs):
    with torch.no_grad():
        out = dev(**inputs, guidance=3.5)
    assert out.shape == (B, 16, H, W) and out.dtype == torch.float32
    expected = _pipeline_call(dev.transformer, **inputs, guidance=torch.tensor([3.5, 3.5]))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the guidance number reaches the model: another value, another output
        assert not torch.allclose(out, dev(**inputs, guidance=1.0), atol=1e-4)


def test_flux_guidance_none_leaves_the_guidance_term_out(dev, inputs):
    """As ComfyUI's Flux does for guidance None: the same as a model without the guidance embedder."""
    bfl = tiny_dit.flux_diffusers_to_bfl(dev.transformer.state_dict())
    schnell_like = load_flux({k: v for k, v in bfl.items() if not k.startswith("guidance_in.")})
    with torch.no_grad():
        out, expected = dev(**inputs), schnell_like(**inputs)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(out, dev(**inputs, guidance=0.0), atol=1e-4)
        assert dev.transformer.time_text_embed.guidance_embedder._forward_hooks == {}  # hook removed again


def test_flux_schnell_ignores_guidance(inputs):
    schnell = FluxModel(tiny_dit.tiny_flux(guidance=False, seed=12))
    with torch.no_grad():
        torch.testing.assert_close(schnell(**inputs, guidance=3.5), schnell(**inputs), atol=0, rtol=0)
        expected = _pipeline_call(schnell.transformer, **inputs)
        torch.testing.assert_close(schnell(**inputs), expected, atol=1e-5, rtol=1e-5)


def test_flux_odd_sizes_are_padded_circularly_and_cropped(dev, inputs):
    x = inputs["x"][:, :, :7, :5]
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="circular")
    with torch.no_grad():
        out = dev(**{**inputs, "x": x}, guidance=2.0)
        full = dev(**{**inputs, "x": padded}, guidance=2.0)
    assert out.shape == (B, 16, 7, 5)
    torch.testing.assert_close(out, full[:, :, :7, :5], atol=1e-6, rtol=1e-6)


def test_pack_and_ids_match_diffusers_and_unpack_inverts():
    x = torch.randn(2, 16, 6, 10)
    tokens, ids = pack(x)
    torch.testing.assert_close(tokens, FluxPipeline._pack_latents(x, 2, 16, 6, 10), atol=0, rtol=0)
    torch.testing.assert_close(ids, FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32))
    torch.testing.assert_close(unpack(tokens, 6, 10), x, atol=0, rtol=0)
    _, ref_ids = pack(x, index=1, h_offset=7, w_offset=2)
    assert ref_ids[0].tolist() == [1.0, 4.0, 1.0]  # offsets in latent pixels, rounded half up to patches


def test_kontext_reference_is_appended_as_in_the_kontext_pipeline(dev, inputs):
    ref = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = dev(**inputs, guidance=2.5, ref_latents=[ref])
    tokens = FluxKontextPipeline._pack_latents(ref.expand(B, -1, -1, -1), B, 16, 4, 6)
    ids = FluxKontextPipeline._prepare_latent_image_ids(B, 2, 3, "cpu", torch.float32)
    ids[..., 0] = 1
    expected = _pipeline_call(dev.transformer, **inputs, guidance=torch.tensor([2.5, 2.5]), extra_tokens=tokens,
                              extra_ids=ids)
    assert out.shape == (B, 16, H, W)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(out, dev(**inputs, guidance=2.5), atol=1e-4)


def test_reference_ids_follow_comfyui_methods():
    refs = [torch.zeros(1, 16, 8, 8), torch.zeros(1, 16, 8, 12)]
    assert reference_ids(refs, 8, 8) == [(1, 0, 0), (1, 8, 0)]  # second goes below: keeps the canvas squarer
    assert reference_ids([torch.zeros(1, 16, 8, 4)] * 2, 8, 8) == [(1, 0, 0), (1, 0, 4)]  # tall ones go beside
    assert reference_ids(refs, 8, 8, "index") == [(1, 0, 0), (2, 0, 0)]
    assert reference_ids(refs, 8, 8, "uxo/uno") == [(0, 8, 8), (0, 16, 16)]
    with pytest.raises(ValueError, match="offset"):
        reference_ids(refs, 8, 8, "sideways")


def test_flux_fill_concatenates_before_packing(inputs):
    fill = FluxModel(tiny_dit.tiny_flux(guidance=True, in_channels=384, seed=13))
    concat = torch.randn(B, 80, H, W, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = fill(**inputs, guidance=30.0, concat=concat)
    expected = _pipeline_call(fill.transformer, torch.cat([inputs["x"], concat], 1), inputs["sigma"],
                              inputs["context"], inputs["pooled"], guidance=torch.tensor([30.0, 30.0]))
    torch.testing.assert_close(out, expected[:, :16], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="64 concatenated|80 concatenated"):
        fill(**inputs, guidance=30.0)


def test_flux_concat_builds_image_and_8x8_mask_channels():
    noise = torch.zeros(1, 16, 4, 6)
    image = torch.randn(1, 16, 4, 6)
    assert flux_concat(noise, 64) is None
    torch.testing.assert_close(flux_concat(noise, 128, image, process_latent_in=lambda t: t * 2), image * 2)
    mask = torch.zeros(1, 32, 48)
    mask[0, 8 * 2 + 3, 8 * 5 + 6] = 1.0  # one pixel in latent cell (2, 5), at (3, 6) inside the cell
    out = flux_concat(noise, 384, image, mask)
    assert out.shape == (1, 80, 4, 6)
    hit = (out[0, 16:] == 1).nonzero().tolist()
    assert hit == [[3 * 8 + 6, 2, 5]]
    assert flux_concat(torch.zeros(3, 16, 4, 6), 384)[:, 16:].eq(1).all()  # no mask: repaint everything


def test_bf16_weights_take_float32_inputs_and_return_float32(inputs):
    model = load_flux(tiny_dit.flux_pieces(guidance=True, seed=11), dtype=torch.bfloat16)
    with torch.no_grad():
        out = model(**inputs, guidance=3.5)
    assert out.dtype == torch.float32 and model.dtype == torch.bfloat16


# -- SD3 --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd35():
    return SD3Model(tiny_dit.tiny_sd3(seed=14))


def test_sd3_timestep_is_sigma_times_1000(sd35, inputs):
    with torch.no_grad():
        out = sd35(**inputs)
        expected = sd35.transformer(hidden_states=inputs["x"], encoder_hidden_states=inputs["context"],
                                    pooled_projections=inputs["pooled"], timestep=inputs["sigma"] * 1000,
                                    return_dict=False)[0]
    assert out.shape == (B, 16, H, W) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    with torch.no_grad():  # guidance and reference latents are not SD3 conditioning
        torch.testing.assert_close(sd35(**inputs, guidance=3.5, ref_latents=[inputs["x"]]), out, atol=0, rtol=0)


def test_sd3_odd_sizes_are_padded_and_cropped(sd35, inputs):
    x = inputs["x"][:, :, :7, :5]
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="circular")
    with torch.no_grad():
        out, full = sd35(**{**inputs, "x": x}), sd35(**{**inputs, "x": padded})
    assert out.shape == (B, 16, 7, 5)
    torch.testing.assert_close(out, full[:, :, :7, :5], atol=1e-6, rtol=1e-6)


def test_sd3_too_large_latent_says_so(sd35, inputs):
    with pytest.raises(ValueError, match="position table"):
        sd35(**{**inputs, "x": torch.zeros(1, 16, 40, 8)})


def test_loaded_sd3_file_runs(tmp_path, inputs):
    model = load_sd3(tiny_dit.write_sd3_file(tmp_path / "sd3.5_tiny.safetensors", seed=14))
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs), SD3Model(tiny_dit.tiny_sd3(seed=14))(**inputs),
                                   atol=1e-5, rtol=1e-5)


def test_batch_helpers_follow_comfyui():
    from comfykit.engine.models.flux import repeat_to_batch, resize_to_batch

    t = torch.arange(4.0)[:, None]
    assert resize_to_batch(t[:2], 3)[:, 0].tolist() == [0, 1, 1]
    assert resize_to_batch(t, 2)[:, 0].tolist() == [0, 3]
    assert repeat_to_batch(t[:2], 5)[:, 0].tolist() == [0, 1, 0, 1, 0]
    assert repeat_to_batch(t, 1)[:, 0].tolist() == [0]
