"""FLUX.1 / SD3.5 transformers: detection, config from shapes, key conversion and loading in every file layout.

Each tiny random diffusers model is written in a user-facing layout (BFL, Stability, ComfyUI all-in-one, diffusers)
and loaded with `load_flux` / `load_sd3`; the reference is the same model saved with `save_pretrained` and loaded
back with diffusers' own `from_pretrained`, so a key-mapping mistake cannot hide on both sides.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from comfykit.engine.models import tiny_dit  # noqa: E402
from comfykit.engine.models.checkpoint import read_state_dict  # noqa: E402
from comfykit.engine.models.dit_common import detect_layout, find_layout, split_diffusion_model  # noqa: E402
from comfykit.engine.models.flux import flux_to_diffusers, infer_flux_config, load_flux, rope_axes  # noqa: E402
from comfykit.engine.models.sd3 import infer_sd3_config, load_sd3, sd3_to_diffusers  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402


def _flux_inputs(model, seed=1, tokens=16, text=5):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    args = {"hidden_states": torch.randn(2, tokens, c.in_channels, generator=g),
            "encoder_hidden_states": torch.randn(2, text, c.joint_attention_dim, generator=g),
            "pooled_projections": torch.randn(2, c.pooled_projection_dim, generator=g),
            "timestep": torch.tensor([0.9, 0.3]),
            "img_ids": torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0),
                                                  indexing="ij"), -1).reshape(-1, 3),
            "txt_ids": torch.zeros(text, 3), "return_dict": False}
    if c.guidance_embeds:
        args["guidance"] = torch.tensor([3.5, 2.0])
    return args


def _sd3_inputs(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return {"hidden_states": torch.randn(2, c.in_channels, 8, 6, generator=g),
            "encoder_hidden_states": torch.randn(2, 7, c.joint_attention_dim, generator=g),
            "pooled_projections": torch.randn(2, c.pooled_projection_dim, generator=g),
            "timestep": torch.tensor([900.0, 250.0]), "return_dict": False}


def _same_output(ours, reference, inputs):
    with torch.no_grad():
        a, b = ours(**inputs)[0], reference(**inputs)[0]
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def flux_dev(tmp_path_factory):
    """(tiny dev-like diffusers model, its from_pretrained twin, a folder holding both layouts)."""
    model = tiny_dit.tiny_flux(guidance=True, seed=3)
    folder = tmp_path_factory.mktemp("flux")
    tiny_dit.write_diffusers_folder(folder / "pipe", model)
    reference = diffusers.FluxTransformer2DModel.from_pretrained(str(folder / "pipe" / "transformer")).eval()
    return model, reference, folder


@pytest.fixture(scope="module")
def sd35(tmp_path_factory):
    model = tiny_dit.tiny_sd3(seed=4)
    folder = tmp_path_factory.mktemp("sd3")
    tiny_dit.write_diffusers_folder(folder / "pipe", model)
    reference = diffusers.SD3Transformer2DModel.from_pretrained(str(folder / "pipe" / "transformer")).eval()
    return model, reference, folder


# -- key conversion --------------------------------------------------------------------------------------------
def test_flux_inverse_mapping_round_trips_through_diffusers_converter():
    sd = tiny_dit.tiny_flux(guidance=True).state_dict()
    bfl = tiny_dit.flux_diffusers_to_bfl(sd)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "single_blocks.1.linear1.weight" in bfl
    back = flux_to_diffusers(bfl)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_flux_single_block_split_matches_diffusers_at_the_released_width():
    """Our split of the fused linear1 at any width equals diffusers' own at FLUX.1's 3072 (tiny input width)."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    inner = 3072
    g = torch.Generator().manual_seed(0)
    bfl = tiny_dit.flux_diffusers_to_bfl(tiny_dit.tiny_flux(num_single_layers=1).state_dict())
    bfl["img_in.weight"] = torch.randn(inner, 64, generator=g)  # only its height (the width) is read
    bfl["single_blocks.0.linear1.weight"] = torch.randn(7 * inner, 3, generator=g)
    bfl["single_blocks.0.linear1.bias"] = torch.randn(7 * inner, generator=g)
    ours = flux_to_diffusers(bfl)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    for k in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"):
        for kind in ("weight", "bias"):
            key = f"single_transformer_blocks.0.{k}.{kind}"
            assert torch.equal(ours[key], theirs[key])


def test_sd3_inverse_mapping_round_trips_through_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    for model in (tiny_dit.tiny_sd3(), tiny_dit.tiny_sd3(dual=(), qk_norm=None, attention_head_dim=64,
                                                        num_attention_heads=1, caption_projection_dim=64)):
        sd = model.state_dict()
        sai = tiny_dit.sd3_diffusers_to_sai(sd)
        assert "joint_blocks.1.context_block.adaLN_modulation.1.weight" in sai
        back = convert_sd3_transformer_checkpoint_to_diffusers(dict(sai))
        assert set(back) == set(sd)
        assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_vae16_pieces_round_trip_through_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = tiny_dit.tiny_vae16()
    pieces = tiny_dit.vae16_pieces("vae.")
    assert "vae.decoder.conv_in.weight" in pieces and not any("quant_conv" in k for k in pieces)
    assert pieces["vae.decoder.conv_in.weight"].shape[1] == 16
    back = convert_ldm_vae_checkpoint(pieces, dict(vae.config))
    sd = vae.state_dict()
    assert set(back) == set(sd)
    assert all(torch.equal(back[k].reshape(sd[k].shape), sd[k]) for k in sd)


# -- config from shapes, at the released sizes (meta tensors: no memory) ----------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"guidance_embeds": False},                                    # schnell
    {"guidance_embeds": True},                                     # dev, Krea, Kontext
    {"guidance_embeds": True, "in_channels": 384, "out_channels": 64},  # Fill dev
], ids=["schnell", "dev", "fill"])
def test_flux_config_from_released_shapes(kwargs):
    with torch.device("meta"):
        model = diffusers.FluxTransformer2DModel(**kwargs)
    bfl = tiny_dit.flux_diffusers_to_bfl(model.state_dict())
    assert find_layout(bfl) == ("flux-bfl", "")
    cfg = infer_flux_config(flux_to_diffusers(bfl))
    expected = {k: model.config[k] for k in cfg}
    expected["out_channels"] = expected["out_channels"] or 64
    assert cfg == {**expected, "axes_dims_rope": (16, 56, 56)}


@pytest.mark.parametrize("kwargs", [
    {"num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536, "pos_embed_max_size": 192},
    {"num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536, "pos_embed_max_size": 384,
     "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm"},
    {"num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432, "pos_embed_max_size": 192,
     "qk_norm": "rms_norm"},
], ids=["sd3-medium", "sd3.5-medium", "sd3.5-large"])
def test_sd3_config_from_released_shapes(kwargs):
    with torch.device("meta"):
        model = diffusers.SD3Transformer2DModel(sample_size=128, joint_attention_dim=4096, pooled_projection_dim=2048,
                                                **kwargs)
    sai = tiny_dit.sd3_diffusers_to_sai(model.state_dict())
    assert find_layout(sai) == ("sd3-sai", "")
    cfg = infer_sd3_config(sd3_to_diffusers(sai))
    expected = {k: model.config[k] for k in cfg}
    expected["dual_attention_layers"] = tuple(expected["dual_attention_layers"])
    assert cfg == expected


def test_rope_axes_fill_the_head_width_with_even_parts():
    for width in (8, 16, 24, 32, 64, 128, 256):
        axes = rope_axes(width)
        assert sum(axes) == width and all(a % 2 == 0 and a > 0 for a in axes)
    assert rope_axes(128) == (16, 56, 56)


# -- detection --------------------------------------------------------------------------------------------------
def test_detects_every_layout_and_prefix():
    assert detect_layout(tiny_dit.flux_pieces(prefix="")) == "flux-bfl"
    assert detect_layout(tiny_dit.tiny_flux().state_dict()) == "flux-diffusers"
    assert detect_layout(tiny_dit.sd3_pieces(prefix="")) == "sd3-sai"
    assert detect_layout(tiny_dit.tiny_sd3().state_dict()) == "sd3-diffusers"
    allinone = tiny_dit.flux_pieces() | tiny_dit.vae16_pieces("vae.")
    layout, prefix, dm = split_diffusion_model(allinone)
    assert (layout, prefix) == ("flux-bfl", "model.diffusion_model.")
    assert not any(k.startswith(("vae.", "model.")) for k in dm)
    assert find_layout(tiny_dit.sd3_pieces() | tiny_dit.vae16_pieces("first_stage_model."))[1] == "model.diffusion_model."


def test_sd_unets_and_vaes_are_not_taken_for_dits(make_ckpt):
    for arch in ("sd1", "sdxl"):
        sd = read_state_dict(make_ckpt(arch))
        assert find_layout(sd) is None
        with pytest.raises(ModelError, match="SD1/SD2/SDXL UNet"):
            load_flux(sd)
    unet = diffusers.UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                          norm_num_groups=32, attention_head_dim=8,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    assert find_layout(unet.state_dict()) is None
    for vae in (tiny_dit.vae16_pieces(""), tiny_dit.vae16_pieces("vae."), tiny_dit.tiny_vae16().state_dict()):
        assert find_layout(vae) is None
        with pytest.raises(ModelError, match="VAE"):
            load_sd3(vae)


# -- loading, per layout ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["bfl", "comfyui", "diffusers-file", "diffusers-folder", "transformer-folder"])
def test_flux_dev_loads_in_every_layout(flux_dev, layout):
    model, reference, folder = flux_dev
    sd = model.state_dict()
    if layout == "bfl":
        source = save = folder / "flux1-tiny-dev.safetensors"
        save_file({k: v.contiguous() for k, v in tiny_dit.flux_diffusers_to_bfl(sd).items()}, str(save))
    elif layout == "comfyui":
        source = folder / "flux1-tiny-dev-aio.safetensors"
        bfl = tiny_dit.flux_diffusers_to_bfl(sd)
        pieces = {"model.diffusion_model." + k: v.contiguous() for k, v in bfl.items()} | tiny_dit.vae16_pieces()
        save_file(pieces, str(source))
    elif layout == "diffusers-file":
        source = folder / "diffusion_pytorch_model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(source))
    elif layout == "diffusers-folder":
        source = folder / "pipe"
    else:
        source = folder / "pipe" / "transformer"
    ours = load_flux(source)
    assert ours.guidance_embeds and ours.concat_channels == 0
    _same_output(ours.transformer, reference, _flux_inputs(reference))


def test_flux_schnell_has_no_guidance_embedder(tmp_path):
    path = tiny_dit.write_flux_file(tmp_path / "flux1-tiny-schnell.safetensors", guidance=False, seed=5)
    assert not any(k.startswith("guidance_in.") for k in read_state_dict(path))
    model = tiny_dit.tiny_flux(guidance=False, seed=5)
    ours = load_flux(path)
    assert not ours.guidance_embeds
    _same_output(ours.transformer, model, _flux_inputs(model))


def test_flux_fill_has_more_input_channels(tmp_path):
    model = tiny_dit.tiny_flux(guidance=True, in_channels=384, seed=6)
    save_file({k: v.contiguous() for k, v in tiny_dit.flux_diffusers_to_bfl(model.state_dict()).items()},
              str(tmp_path / "fill.safetensors"))
    ours = load_flux(tmp_path / "fill.safetensors")
    assert ours.concat_channels == 80
    _same_output(ours.transformer, model, _flux_inputs(model))


@pytest.mark.parametrize("layout", ["stability", "diffusers-file", "diffusers-folder"])
def test_sd35_loads_in_every_layout(sd35, layout):
    model, reference, folder = sd35
    if layout == "stability":
        source = tiny_dit.write_sd3_file(folder / "sd3.5_tiny.safetensors", seed=4)
        assert find_layout(read_state_dict(source)) == ("sd3-sai", "model.diffusion_model.")
    elif layout == "diffusers-file":
        source = folder / "diffusion_pytorch_model.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(source))
    else:
        source = folder / "pipe"
    ours = load_sd3(source)
    _same_output(ours.transformer, reference, _sd3_inputs(reference))


def test_sd3_medium_without_qk_norm_uses_64_wide_heads(tmp_path):
    model = tiny_dit.tiny_sd3(dual=(), qk_norm=None, attention_head_dim=64, num_attention_heads=2,
                              caption_projection_dim=128, seed=7)
    path = tmp_path / "sd3_medium_tiny.safetensors"
    save_file({"model.diffusion_model." + k: v.contiguous()
               for k, v in tiny_dit.sd3_diffusers_to_sai(model.state_dict()).items()}, str(path))
    ours = load_sd3(path)
    assert ours.config.num_attention_heads == 2 and ours.config.qk_norm is None
    _same_output(ours.transformer, model, _sd3_inputs(model))


def test_dtype_and_device_follow_the_request(tmp_path):
    path = tiny_dit.write_flux_file(tmp_path / "f.safetensors", dtype=torch.float16)
    assert load_flux(path).dtype == torch.float32  # CPU default
    assert load_flux(path, dtype=torch.bfloat16).dtype == torch.bfloat16


# -- bad files --------------------------------------------------------------------------------------------------
def test_truncated_file_is_a_model_error(tmp_path):
    path = tiny_dit.write_flux_file(tmp_path / "flux.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated"):
        load_flux(path)


def test_wrong_files_are_model_errors_that_say_what_they_are(tmp_path):
    sd3 = tiny_dit.write_sd3_file(tmp_path / "sd3.safetensors")
    with pytest.raises(ModelError, match="load_sd3"):
        load_flux(sd3)
    flux = tiny_dit.write_flux_file(tmp_path / "flux.safetensors")
    with pytest.raises(ModelError, match="load_flux"):
        load_sd3(flux)
    (tmp_path / "junk.safetensors").write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="junk.safetensors"):
        load_flux(tmp_path / "junk.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no .safetensors"):
        load_flux(tmp_path / "empty")


def test_missing_or_mismatched_tensors_are_model_errors(tmp_path):
    sd = tiny_dit.flux_pieces(prefix="")
    broken = dict(sd)
    del broken["double_blocks.0.txt_attn.proj.weight"]
    with pytest.raises(ModelError, match="incomplete"):
        load_flux(broken, name="flux1-broken.safetensors")
    sd3 = tiny_dit.sd3_pieces(prefix="")
    sd3["joint_blocks.0.x_block.mlp.fc2.weight"] = sd3["joint_blocks.0.x_block.mlp.fc2.weight"][:, :-1]
    with pytest.raises(ModelError, match="sd3-bad"):
        load_sd3(sd3, name="sd3-bad.safetensors")


# -- fp8, dispatch ----------------------------------------------------------------------------------------------
def test_fp8_files_load_upcast(tmp_path):
    pieces = tiny_dit.flux_pieces(guidance=True, seed=8)
    path = tiny_dit.write_flux_file(tmp_path / "flux1-tiny-fp8.safetensors", guidance=True, seed=8,
                                    prefix="model.diffusion_model.", dtype=torch.float8_e4m3fn)
    ours = load_flux(path)
    key = "model.diffusion_model.double_blocks.0.img_attn.proj.weight"
    rounded = pieces[key].to(torch.float8_e4m3fn).float()
    assert not torch.equal(rounded, pieces[key])  # fp8 is lossy: the loaded weights must be the fp8 values
    assert torch.equal(ours.transformer.transformer_blocks[0].attn.to_out[0].weight, rounded)


def test_scaled_fp8_weights_are_multiplied_by_their_scale(tmp_path):
    sd = tiny_dit.sd3_pieces(prefix="model.diffusion_model.", seed=9)
    key = "model.diffusion_model.joint_blocks.0.x_block.mlp.fc1.weight"
    scaled = dict(sd)
    scaled[key] = (sd[key] / 0.25).to(torch.float8_e4m3fn)
    scaled[key[: -len("weight")] + "scale_weight"] = torch.tensor(0.25)
    scaled[key[: -len("weight")] + "scale_input"] = torch.tensor(1.0)
    scaled["model.diffusion_model.scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    ours = load_sd3(scaled)
    expected = (sd[key] / 0.25).to(torch.float8_e4m3fn).float() * 0.25
    assert torch.equal(ours.transformer.transformer_blocks[0].ff.net[0].proj.weight, expected)


def test_load_dit_dispatches_on_the_keys_and_consume_frees_them(tmp_path):
    from comfykit.engine.models.dit_common import load_dit

    flux = load_dit(tiny_dit.write_flux_file(tmp_path / "f.safetensors", guidance=True))
    assert (flux.family, flux.guidance_embeds) == ("flux", True)
    allinone = tiny_dit.sd3_pieces() | tiny_dit.vae16_pieces("first_stage_model.")
    sd3 = load_dit(allinone, name="sd3.5_tiny.safetensors", consume=True)
    assert sd3.family == "sd3" and sd3.name == "sd3.5_tiny.safetensors"
    assert allinone and all(k.startswith("first_stage_model.") for k in allinone)  # only the VAE is left
    with pytest.raises(ModelError, match="VAE"):
        load_dit(tiny_dit.vae16_pieces(""), name="ae.safetensors")
