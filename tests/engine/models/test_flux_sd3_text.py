"""FLUX.1 and SD3.5 text encoders: ComfyUI's shapes and values, stand-alone file loading, the ModelError cases."""

from __future__ import annotations

import types

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from comfykit.engine.models import tiny_text_encoders as tiny  # noqa: E402
from comfykit.engine.models.checkpoint import read_state_dict  # noqa: E402
from comfykit.engine.models.flux_sd3_text import FluxTextEncoder, SD3TextEncoder  # noqa: E402
from comfykit.engine.models.fp8 import dequantize  # noqa: E402
from comfykit.engine.models.t5 import build_t5  # noqa: E402
from comfykit.engine.models.text_encoder import TextEncoder  # noqa: E402
from comfykit.engine.models.text_encoder_files import (  # noqa: E402
    build_clip,
    build_text_encoder,
    checkpoint_text_encoders,
    load_text_encoders,
)
from comfykit.errors import ModelError  # noqa: E402

L, G, D = 32, 48, 96  # clip_l width, clip_g width (= its projection), T5 d_model (> L + G: SD3 pads the CLIPs)
BOS, EOS = 49406, 49407
CAT_CLIP = [320, 1125, 539, 320, 2368]  # "a photo of a cat" in CLIP ids (test_text.py checks them)
CAT_T5 = [3, 9, 1202, 13, 3, 9, 1712, 1]  # ... in T5 ids with </s> (test_t5.py checks them)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("text_encoders")
    sds = {"clip_l": tiny.clip_l_state_dict(width=L), "clip_g": tiny.clip_g_state_dict(width=G),
           "t5xxl": tiny.t5xxl_state_dict(d_model=D)}
    paths = {}
    for name, sd in sds.items():
        paths[name] = d / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(paths[name]))
    return types.SimpleNamespace(dir=d, sds=sds, **paths)


@pytest.fixture(scope="module")
def flux(files):
    return load_text_encoders([files.t5xxl, files.clip_l], "flux")  # DualCLIPLoader takes them in any order


@pytest.fixture(scope="module")
def sd3(files):
    return load_text_encoders([files.clip_l, files.clip_g, files.t5xxl])  # TripleCLIPLoader


def _clip_ids(tokens, pad):
    return torch.tensor([[BOS, *tokens, EOS] + [pad] * (75 - len(tokens))])


def _clip_ref(sd, kind, ids, layer_idx, projection):
    """Hidden state `layer_idx` (no final norm for SD3's -2) and pooled output at the first EOS of a bare CLIP."""
    clip = build_clip(sd, kind, kind, projection=projection)
    eos = torch.tensor([int((ids[0] == EOS).nonzero()[0])])
    with torch.no_grad():
        return clip(ids, layer_idx, layer_idx == -1, eos)


def _t5_ref(sd, tokens, min_length, layer_idx=-1):
    ids = torch.tensor([tokens + [0] * (min_length - len(tokens))])
    with torch.no_grad():
        return build_t5(sd)(ids, layer_idx)


def test_flux_cond_is_t5_and_pooled_is_unprojected_clip_l(files, flux):
    assert isinstance(flux, FluxTextEncoder) and isinstance(flux, TextEncoder)
    cond, pooled = flux.encode("a photo of a cat")
    assert cond.shape == (1, 256, D) and pooled.shape == (1, L) and cond.dtype == pooled.dtype == torch.float32
    torch.testing.assert_close(cond, _t5_ref(files.sds["t5xxl"], CAT_T5, 256), atol=1e-5, rtol=1e-5)
    _, ref_pooled = _clip_ref(files.sds["clip_l"], "clip_l", _clip_ids(CAT_CLIP, EOS), -1, False)
    torch.testing.assert_close(pooled, ref_pooled, atol=1e-5, rtol=1e-5)
    # CLIPTextEncodeFlux: one text per tower
    cond2, pooled2 = flux.encode_towers("a dog", "a photo of a cat")
    torch.testing.assert_close(cond2, cond)
    torch.testing.assert_close(pooled2, flux.encode("a dog")[1])
    # long prompts are not truncated: 300 T5 tokens + </s>
    assert flux.encode("cat " * 300)[0].shape == (1, 301, D)


def test_flux_drops_clip_l_projection_and_loads_from_all_in_one_keys(files, flux):
    with_proj = dict(files.sds["clip_l"], **{"text_projection.weight": torch.randn(L, L)})
    full = tiny.checkpoint_keys({"clip_l": with_proj, "t5xxl": files.sds["t5xxl"]})
    full["text_encoders.clip_l.logit_scale"] = torch.tensor(4.6)
    full["model.diffusion_model.img_in.weight"] = torch.zeros(1)
    parts = checkpoint_text_encoders(full)
    assert set(parts) == {"clip_l", "t5xxl"}
    enc = build_text_encoder("flux", parts, name="flux1-tiny.safetensors")
    cond, pooled = enc.encode("a photo of a cat")
    ref_cond, ref_pooled = flux.encode("a photo of a cat")
    torch.testing.assert_close(pooled, ref_pooled)  # pooled without text_projection, as ComfyUI's Flux CLIP-L
    torch.testing.assert_close(cond, ref_cond)


def test_flux_set_last_layer_reaches_t5_and_leaves_the_original(files, flux):
    clone = flux.clone().set_last_layer(-2)
    assert clone.t5_layer == -2 and flux.t5_layer == -1
    cond, _ = clone.encode("a photo of a cat")
    torch.testing.assert_close(cond, _t5_ref(files.sds["t5xxl"], CAT_T5, 256, -2), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cond, flux.encode("a photo of a cat")[0])
    assert flux.clone().set_last_layer(-24).t5_layer == -1  # past T5's depth: ComfyUI reads the last layer


def test_clip_text_encode_node_works_unchanged(flux, sd3):
    from comfykit.engine.models.manager import ModelManager
    from comfykit.nodes.conditioning import CLIPTextEncode

    node = CLIPTextEncode(types.SimpleNamespace(call_with=ModelManager("cpu").call))
    for clip in (flux, sd3):
        (conditioning,) = node.encode(clip, "a photo of a cat")
        cond, extra = conditioning[0]
        expected = clip.encode("a photo of a cat")
        torch.testing.assert_close(cond, expected[0])
        torch.testing.assert_close(extra["pooled_output"], expected[1])


def test_sd3_concatenates_padded_clips_then_t5(files, sd3):
    assert isinstance(sd3, SD3TextEncoder)
    cond, pooled = sd3.encode("a photo of a cat")
    assert cond.shape == (1, 77 + 77, D) and pooled.shape == (1, L + G)
    l_hidden, l_pooled = _clip_ref(files.sds["clip_l"], "clip_l", _clip_ids(CAT_CLIP, EOS), -2, False)
    g_hidden, g_pooled = _clip_ref(files.sds["clip_g"], "clip_g", _clip_ids(CAT_CLIP, 0), -2, True)
    torch.testing.assert_close(cond[:, :77, :L], l_hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond[:, :77, L:L + G], g_hidden, atol=1e-5, rtol=1e-5)
    assert (cond[:, :77, L + G:] == 0).all()
    torch.testing.assert_close(cond[:, 77:], _t5_ref(files.sds["t5xxl"], CAT_T5, 77), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, torch.cat([l_pooled, g_pooled], dim=-1), atol=1e-5, rtol=1e-5)


def test_sd3_without_t5_is_the_clip_part(files, sd3):
    full_cond, full_pooled = sd3.encode("a photo of a cat")
    no_t5 = load_text_encoders([files.clip_g, files.clip_l], "sd3", context_dim=D)
    cond, pooled = no_t5.encode("a photo of a cat")
    torch.testing.assert_close(cond, full_cond[:, :77])
    torch.testing.assert_close(pooled, full_pooled)
    # the real width: CLIP states zero-padded to 4096 features when nothing says otherwise
    assert load_text_encoders([files.clip_g, files.clip_l], "sd3").encode("a cat")[0].shape == (1, 77, 4096)


def test_sd3_single_towers_fill_the_rest_with_zeros(files, sd3):
    full_cond, full_pooled = sd3.encode("a photo of a cat")
    only_l = load_text_encoders(files.clip_l, "sd3", context_dim=D)  # CLIPLoader type sd3
    cond, pooled = only_l.encode("a photo of a cat")
    torch.testing.assert_close(cond[..., :L], full_cond[:, :77, :L])
    assert (cond[..., L:] == 0).all() and pooled.shape == (1, L + 1280) and (pooled[:, L:] == 0).all()
    only_g = SD3TextEncoder(clip_g=sd3.clips["clip_g"], context_dim=D, l_width=L)
    cond, pooled = only_g.encode("a photo of a cat")
    torch.testing.assert_close(cond, F.pad(full_cond[:, :77, L:L + G], (L, D - L - G)))
    torch.testing.assert_close(pooled, F.pad(full_pooled[:, L:], (L, 0)))
    only_t5 = load_text_encoders(files.t5xxl, "sd3")
    cond, pooled = only_t5.encode("a photo of a cat")
    torch.testing.assert_close(cond, full_cond[:, 77:])
    assert pooled.shape == (1, 768 + 1280) and (pooled == 0).all()


def test_sd3_empty_padding(sd3):
    # "none": empty texts leave their towers out; an empty T5 still encodes a lone </s>
    cond, pooled = sd3.encode_towers("", "", "", empty_padding="none")
    assert cond.shape == (1, 1, D) and (pooled == 0).all()
    torch.testing.assert_close(cond, sd3.t5.encode_tokens([(1, 1.0)]))
    cond, pooled = sd3.encode_towers("", "", "", empty_padding="empty_prompt")
    expected = sd3.encode("")
    torch.testing.assert_close(cond, expected[0])
    torch.testing.assert_close(pooled, expected[1])
    # a CLIP-G text shorter than the CLIP-L one gets empty-prompt chunks so the two line up
    long = " ".join(["cat"] * 100)
    cond, _ = sd3.encode_towers(long, "a cat", "a cat")
    assert cond.shape == (1, 154 + 77, D)
    g_empty = sd3.encode_towers("", "", "", empty_padding="empty_prompt")[0][:, :77, L:L + G]
    torch.testing.assert_close(cond[:, 77:154, L:L + G], g_empty)
    with pytest.raises(ValueError, match="empty_padding"):
        sd3.encode_towers("a", "b", "c", empty_padding="zeros")


def test_sdxl_pairs_and_the_refiner_clip_g(files):
    sdxl = load_text_encoders([files.clip_l, files.clip_g], "sdxl")
    cond, pooled = sdxl.encode("a photo of a cat")
    assert type(sdxl) is TextEncoder and cond.shape == (1, 77, L + G) and pooled.shape == (1, G)
    refiner = load_text_encoders(files.clip_g)  # CLIPLoader type stable_diffusion with a clip_g
    cond, pooled = refiner.encode("a photo of a cat")
    assert cond.shape == (1, 77, G) and pooled.shape == (1, G)
    sd1 = load_text_encoders(files.clip_l)
    assert sd1.encode("a cat")[0].shape == (1, 77, L)


def test_fp8_scaled_t5_in_flux(files, flux):
    path = tiny.write_t5xxl(files.dir / "t5xxl_fp8_e4m3fn_scaled.safetensors", fp8=torch.float8_e4m3fn,
                            scaled=True, d_model=D)
    enc = load_text_encoders([files.clip_l, path], "flux")
    assert enc.t5.model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float8_e4m3fn
    reference = build_text_encoder("flux", {"clip_l": files.sds["clip_l"], "t5xxl": dequantize(read_state_dict(path))})
    torch.testing.assert_close(enc.encode("a cat")[0], reference.encode("a cat")[0], atol=1e-5, rtol=1e-5)


def test_t5_keeps_a_narrower_file_dtype_and_computes_in_float32(files, flux):
    half = {k: v.half() for k, v in files.sds["t5xxl"].items()}
    enc = build_text_encoder("flux", {"clip_l": files.sds["clip_l"], "t5xxl": half})  # CPU: text encoders fp32
    assert enc.t5.model.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float16
    assert enc.clips["clip_l"].text_model.final_layer_norm.weight.dtype == torch.float32
    cond = enc.encode("a photo of a cat")[0]
    assert cond.dtype == torch.float32
    torch.testing.assert_close(cond, flux.encode("a photo of a cat")[0], atol=2e-2, rtol=2e-2)


def test_lora_patches_the_clip_of_a_flux_encoder(tmp_path, flux):
    from comfykit.engine.models.lora import clip_targets, load_lora

    name = next(n for n, (_, p) in clip_targets(flux).items() if n.startswith("lora_te_") and p.endswith("fc1"))
    module = flux.clips["clip_l"].get_submodule(clip_targets(flux)[name][1])
    torch.manual_seed(0)
    lora = {f"{name}.lora_down.weight": torch.randn(4, module.in_features),
            f"{name}.lora_up.weight": torch.randn(module.out_features, 4)}
    save_file(lora, str(tmp_path / "lora.safetensors"))
    _, patched = load_lora(None, flux, tmp_path / "lora.safetensors", 0.0, 1.0)
    assert isinstance(patched, FluxTextEncoder) and patched is not flux and patched.t5 is flux.t5
    cond, pooled = patched.encode("a photo of a cat")
    ref_cond, ref_pooled = flux.encode("a photo of a cat")
    torch.testing.assert_close(cond, ref_cond)  # T5 untouched
    assert not torch.allclose(pooled, ref_pooled)


@pytest.mark.parametrize("paths, type, match", [
    (["t5xxl"], "stable_diffusion", r"T5-XXL text encoder, not one CLIPLoader type 'stable_diffusion'.*'flux'"),
    (["clip_l", "t5xxl"], "sdxl", r"t5xxl.safetensors: a T5-XXL.*type 'sdxl' takes clip_l \+ clip_g"),
    (["clip_l", "clip_g"], "flux", r"clip_g.safetensors: a CLIP-G.*'flux' takes clip_l \+ t5xxl"),
    (["clip_l", "clip_l"], "flux", "given twice"),
    (["t5xxl"], "wan", "type 'wan' is not supported"),
])
def test_wrong_text_encoder_files_name_the_loader_to_use(files, paths, type, match):
    with pytest.raises(ModelError, match=match):
        load_text_encoders([getattr(files, p) for p in paths], type)


@pytest.mark.parametrize("keys, match", [
    ({"double_blocks.0.img_attn.qkv.weight": 1, "single_blocks.0.linear1.weight": 1},
     "FLUX.1 diffusion model.*UNETLoader"),
    ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": 1, "text_encoders.clip_l.transformer.x": 1},
     "all-in-one checkpoint.*CheckpointLoaderSimple"),
    ({"decoder.conv_in.weight": 1, "encoder.conv_in.weight": 1, "decoder.up.0.block.0.conv1.weight": 1}, "VAELoader"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": 1,
      "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": 1}, "LoraLoader"),
])
def test_non_text_encoder_files_say_what_they_look_like(tmp_path, keys, match):
    path = tmp_path / "thing.safetensors"
    save_file({k: torch.zeros(2) for k in keys}, str(path))
    with pytest.raises(ModelError, match=rf"thing.safetensors: not a text encoder: this looks like .*{match}"):
        load_text_encoders(path, "stable_diffusion")
