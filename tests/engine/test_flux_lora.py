"""FLUX.1 and SD3.5 LoRAs onto clones of tiny models: each key layout, BFL's control LoRAs, fp8, wrong families."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from comfykit.engine.models import load_lora  # noqa: E402
from comfykit.engine.models.checkpoint import load_diffusion_model, read_state_dict  # noqa: E402
from comfykit.engine.models.lora_dit import bfl_to_diffusers_modules, sai_to_diffusers_modules  # noqa: E402
from comfykit.engine.models.tiny_dit import (  # noqa: E402
    flux_diffusers_to_bfl,
    sd3_diffusers_to_sai,
    tiny_flux,
    tiny_sd3,
    write_flux_file,
    write_sd3_file,
)
from comfykit.engine.models.tiny_lora import make_flux_lora  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402


@pytest.fixture(scope="module")
def flux_file(tmp_path_factory):
    return write_flux_file(tmp_path_factory.mktemp("flux") / "flux1-dev.safetensors", guidance=True)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.network.transformer.state_dict().items()}


def _hand_merged(base: dict[str, torch.Tensor], lora_path, layout: str, strength: float) -> dict[str, torch.Tensor]:
    """The reference: each LoRA's up @ down x alpha/rank x strength added to the BFL-layout weight, then the whole
    model converted to diffusers names by diffusers' own checkpoint converter (what a merged file would load as)."""
    from comfykit.engine.models.flux import flux_to_diffusers

    lora = read_state_dict(lora_path)
    bfl = flux_diffusers_to_bfl(base)
    if layout == "xlabs":
        return _xlabs_merged(base, lora, strength)
    if layout == "peft":
        merged = dict(base)
        for key in [k for k in lora if k.endswith("lora_A.weight")]:
            name = key[len("transformer."):-len(".lora_A.weight")]
            merged[name + ".weight"] = base[name + ".weight"] + strength * (
                lora[key.replace("lora_A", "lora_B")] @ lora[key])
        return merged
    kohya = {"lora_unet_" + k[:-len(".weight")].replace(".", "_"): k for k in bfl if k.endswith(".weight")}
    for key in [k for k in lora if k.endswith(("lora_A.weight", "lora_down.weight"))]:
        up = lora[key.replace("lora_A", "lora_B").replace("lora_down", "lora_up")]
        name = key.rsplit(".", 2)[0]
        scale = float(lora[name + ".alpha"]) / lora[key].shape[0] if name + ".alpha" in lora else 1.0
        weight = kohya[name] if layout == "kohya" else name[len("diffusion_model."):] + ".weight"
        bfl[weight] = bfl[weight] + strength * scale * (up @ lora[key])
    return flux_to_diffusers(bfl)


def _xlabs_merged(base: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], strength: float) -> dict:
    """XLabs' processors: qkv_lora1/2 on the image/text q, k, v, proj_lora1/2 on the outputs; no alpha."""
    merged = dict(base)
    inner = base["x_embedder.weight"].shape[0]

    def add(target: str, key: str, rows: slice = slice(None)) -> None:
        merged[target + ".weight"] = merged[target + ".weight"] + strength * (
            lora[key + ".up.weight"][rows] @ lora[key + ".down.weight"])

    for key in {k.rsplit(".", 2)[0] for k in lora}:
        i = key.split(".")[1]
        if key.startswith("double_blocks"):
            d, stream = f"transformer_blocks.{i}.attn.", key[-1]
            if "qkv" in key:
                for j, x in enumerate("qkv"):
                    add(d + (f"to_{x}" if stream == "1" else f"add_{x}_proj"), key, slice(j * inner, (j + 1) * inner))
            else:
                add(d + ("to_out.0" if stream == "1" else "to_add_out"), key)
        elif "qkv" in key:
            for j, x in enumerate("qkv"):
                add(f"single_transformer_blocks.{i}.attn.to_{x}", key, slice(j * inner, (j + 1) * inner))
        else:
            add(f"single_transformer_blocks.{i}.proj_out", key)
    return merged


def _take(weight: torch.Tensor, rows) -> torch.Tensor:
    """The rows of an original fused weight that a diffusers module holds ("swap": the two halves exchanged)."""
    if rows == "swap":
        return torch.cat(weight.chunk(2)[::-1])
    return weight if rows is None else weight[rows[0]:rows[1]]


@pytest.mark.parametrize("layout", ["bfl", "kohya", "peft", "xlabs"])
def test_each_layout_equals_the_hand_merged_model(flux_file, tmp_path, layout):
    model = load_diffusion_model(flux_file)
    before = _weights(model)
    path = make_flux_lora(tmp_path / f"{layout}.safetensors", flux_file, layout=layout)
    patched, clip = load_lora(model, None, path, 0.7, 1.0)
    assert clip is None and patched is not model and str(path) in patched.patches
    want = _hand_merged(before, path, layout, 0.7)
    got = _weights(patched)
    changed = [k for k in got if not torch.equal(got[k], before[k])]
    assert len(changed) > 10  # the LoRA reached the model, through every split (qkv, linear1, adaLN)
    for key in got:
        assert torch.allclose(got[key], want[key], atol=1e-5), key
    assert all(torch.equal(v, before[k]) for k, v in _weights(model).items())  # the original is untouched
    # clones share what the LoRA leaves alone
    assert (patched.network.transformer.proj_out.bias.data_ptr() == model.network.transformer.proj_out.bias.data_ptr())


def test_the_name_table_matches_diffusers_converter():
    """The BFL -> diffusers row splits are the ones diffusers' checkpoint converter makes (odd width, 2+3 blocks)."""
    from comfykit.engine.models.flux import flux_to_diffusers

    t = tiny_flux(guidance=True, num_layers=2, num_single_layers=3)
    bfl = flux_diffusers_to_bfl(t.state_dict())
    converted = flux_to_diffusers(bfl)
    seen = set()
    for name, targets in bfl_to_diffusers_modules(t).items():
        leaf = "scale" if name.endswith("_norm") else "weight"
        for module, rows in targets:
            want = converted[module + ".weight"]
            got = bfl[f"{name}.{leaf}"]
            assert torch.equal(_take(got, rows), want), (name, module)
            seen.add(module + ".weight")
    assert seen == {k for k in converted if k.endswith(".weight")}


def test_strength_zero_is_the_same_model_and_outputs_change_otherwise(flux_file, tmp_path):
    model = load_diffusion_model(flux_file)
    path = make_flux_lora(tmp_path / "l.safetensors", flux_file, layout="bfl")
    assert load_lora(model, None, path, 0.0, 0.0)[0] is model
    assert load_lora(model, None, path, 0.0, 1.0)[0] is model
    x, ctx, pooled = torch.randn(1, 16, 8, 8), torch.randn(1, 5, 32), torch.randn(1, 24)
    base = model(x, torch.tensor([500.0]), ctx, pooled)
    out = load_lora(model, None, path, 1.0, 1.0)[0](x, torch.tensor([500.0]), ctx, pooled)
    assert not torch.allclose(base, out, atol=1e-4)
    assert torch.equal(model(x, torch.tensor([500.0]), ctx, pooled), base)


def test_fp8_model_with_a_lora_stays_fp8_and_is_close_to_float(flux_file, tmp_path):
    path = make_flux_lora(tmp_path / "k.safetensors", flux_file, layout="kohya")
    full = load_lora(load_diffusion_model(flux_file), None, path, 1.0, 1.0)[0]
    fp8 = load_diffusion_model(flux_file, weight_dtype="fp8_e4m3fn")
    patched = load_lora(fp8, None, path, 1.0, 1.0)[0]
    layer = patched.network.transformer.transformer_blocks[0].attn.to_q
    assert layer.weight.dtype == torch.float8_e4m3fn  # stored back in fp8: a LoRA does not double the memory
    assert not torch.equal(layer.weight.float(), fp8.network.transformer.transformer_blocks[0].attn.to_q.weight.float())
    x, ctx, pooled = torch.randn(1, 16, 8, 8), torch.randn(1, 5, 32), torch.randn(1, 24)
    a, b = full(x, torch.tensor([500.0]), ctx, pooled), patched(x, torch.tensor([500.0]), ctx, pooled)
    assert (a - b).abs().mean() < 0.1 * a.abs().mean()


def test_scaled_fp8_model_keeps_its_scales_and_the_lora(flux_file, tmp_path):
    """A scaled-fp8 file (w / scale in fp8 + scale_weight): the patched weight is stored back over the same scale."""
    from comfykit.engine.models.tiny_dit import _save
    from comfykit.engine.models.tiny_text_encoders import to_fp8

    scaled = _save(to_fp8(read_state_dict(flux_file), scaled=True), tmp_path / "flux1-dev-fp8-scaled.safetensors")
    path = make_flux_lora(tmp_path / "p.safetensors", flux_file, layout="peft")
    model = load_diffusion_model(scaled)
    patched = load_lora(model, None, path, 1.0, 1.0)[0]
    layer, base = (m.network.transformer.single_transformer_blocks[0].attn.to_q for m in (patched, model))
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.scale_weight is base.scale_weight
    lora = read_state_dict(path)
    key = "transformer.single_transformer_blocks.0.attn.to_q"
    want = base.weight.float() * base.scale_weight + lora[key + ".lora_B.weight"] @ lora[key + ".lora_A.weight"]
    got = layer.weight.float() * layer.scale_weight
    assert (got - want).abs().max() <= 0.07 * want.abs().max()  # e4m3 keeps 3 mantissa bits
    assert not torch.equal(layer.weight.float(), base.weight.float())


def test_bfl_control_lora_widens_x_embedder_on_the_clone_only(flux_file, tmp_path):
    model = load_diffusion_model(flux_file)
    path = make_flux_lora(tmp_path / "flux1-depth-dev-lora.safetensors", flux_file, layout="bfl-control")
    patched = load_lora(model, None, path, 1.0, 0.0)[0]
    t, t0 = patched.network.transformer, model.network.transformer
    assert t.x_embedder.weight.shape == (t0.x_embedder.out_features, 128)
    assert t.config.in_channels == 128 and patched.config["in_channels"] == 128 and patched.network.concat_channels == 16
    assert t0.config.in_channels == 64 and model.config["in_channels"] == 64 and t0.x_embedder.weight.shape[1] == 64
    lora = read_state_dict(path)
    # the norm scales are replaced, not added to; the extra input columns are the LoRA's alone
    assert torch.equal(t.transformer_blocks[0].attn.norm_q.weight, lora["double_blocks.0.img_attn.norm.query_norm.scale"])
    delta = lora["img_in.lora_B.weight"] @ lora["img_in.lora_A.weight"]
    assert torch.allclose(t.x_embedder.weight[:, 64:], delta[:, 64:], atol=1e-6)
    assert torch.allclose(t.x_embedder.bias, t0.x_embedder.bias + lora["img_in.lora_B.bias"], atol=1e-6)
    x, ctx, pooled = torch.randn(1, 16, 8, 8), torch.randn(1, 5, 32), torch.randn(1, 24)
    out = patched(x, torch.tensor([500.0]), ctx, pooled, concat=torch.randn(1, 16, 8, 8))
    assert out.shape == (1, 16, 8, 8) and torch.isfinite(out).all()


def test_wrong_family_loras_name_the_file(flux_file, tmp_path):
    from comfykit import demo
    from comfykit.engine.models.checkpoint import load_checkpoint

    ckpt = demo.make_checkpoint(tmp_path / "sd15.safetensors", arch="sd1", seed=1)
    sd_lora = demo.make_lora(tmp_path / "sd15-lora.safetensors", ckpt)
    with pytest.raises(ModelError, match="sd15-lora.safetensors.*made for an SD/SDXL UNet"):
        load_lora(load_diffusion_model(flux_file), None, sd_lora, 1.0, 1.0)
    flux_lora = make_flux_lora(tmp_path / "flux-lora.safetensors", flux_file, layout="bfl")
    sd_model, sd_clip, _ = load_checkpoint(ckpt)
    with pytest.raises(ModelError, match="flux-lora.safetensors.*FLUX.1 LoRA"):
        load_lora(sd_model, sd_clip, flux_lora, 1.0, 1.0)


def test_lora_loader_patches_transformer_and_clip_of_flux(flux_file, tmp_path):
    """LoraLoader with a FLUX.1 LoRA that also trains CLIP-L (kohya `lora_te1_` keys) patches both clones."""
    from safetensors.torch import load_file, save_file

    from comfykit.engine.models.lora import clip_targets
    from comfykit.engine.models.text_encoder_files import load_text_encoders
    from comfykit.engine.models.tiny_text_encoders import write_clip_l, write_t5xxl

    clip = load_text_encoders([write_clip_l(tmp_path / "clip_l.safetensors"),
                               write_t5xxl(tmp_path / "t5xxl.safetensors")], "flux")
    name, (clip_name, module_path) = next((n, t) for n, t in clip_targets(clip).items() if n.startswith("lora_te"))
    module = clip.clips[clip_name].get_submodule(module_path)
    path = make_flux_lora(tmp_path / "both.safetensors", flux_file, layout="kohya")
    sd = load_file(str(path))
    sd[name + ".lora_down.weight"] = torch.randn(4, module.in_features)
    sd[name + ".lora_up.weight"] = torch.randn(module.out_features, 4)
    save_file(sd, str(path))
    model = load_diffusion_model(flux_file)
    new_model, new_clip = load_lora(model, clip, path, 1.0, 1.0)
    assert new_model is not model and new_clip is not clip
    assert not torch.equal(new_clip.clips[clip_name].get_submodule(module_path).weight, module.weight)
    assert load_lora(model, clip, path, 1.0, 0.0)[1] is clip


# -- SD3 / SD3.5 ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd3_file(tmp_path_factory):
    return write_sd3_file(tmp_path_factory.mktemp("sd3") / "sd3.5_medium.safetensors", prefix="", with_vae=False)


def test_the_sd3_name_table_matches_diffusers_converter():
    """Stability's names -> diffusers rows as diffusers' converter does (dual attention, qk norms, last block)."""
    from comfykit.engine.models.sd3 import sd3_to_diffusers

    t = tiny_sd3(dual=(0,), qk_norm="rms_norm")
    sai = sd3_diffusers_to_sai(t.state_dict())
    converted = sd3_to_diffusers(sai)
    seen = set()
    for name, targets in sai_to_diffusers_modules(t).items():
        for module, rows in targets:
            got, want = sai[name + ".weight"], converted[module + ".weight"]
            assert torch.equal(_take(got, rows), want), (name, module)
            seen.add(module + ".weight")
    assert seen == {k for k in converted if k.endswith(".weight") and k != "pos_embed.pos_embed"}


@pytest.mark.parametrize("layout", ["sai", "kohya", "peft"])
def test_sd3_lora_layouts_equal_the_hand_merged_model(sd3_file, tmp_path, layout):
    from comfykit.engine.models.sd3 import sd3_to_diffusers

    model = load_diffusion_model(sd3_file)
    before = _weights(model)
    path = make_flux_lora(tmp_path / f"sd3-{layout}.safetensors", sd3_file, layout=layout)
    patched = load_lora(model, None, path, 0.7, 1.0)[0]
    lora = read_state_dict(path)
    if layout == "peft":
        want = dict(before)
        for key in [k for k in lora if k.endswith("lora_A.weight")]:
            name = key[len("transformer."):-len(".lora_A.weight")]
            want[name + ".weight"] = before[name + ".weight"] + 0.7 * (lora[key.replace("lora_A", "lora_B")] @ lora[key])
    else:
        sai = sd3_diffusers_to_sai(before)
        kohya = {"lora_unet_" + k[:-len(".weight")].replace(".", "_"): k for k in sai if k.endswith(".weight")}
        for key in [k for k in lora if k.endswith(("lora_A.weight", "lora_down.weight"))]:
            name = key.rsplit(".", 2)[0]
            up = lora[key.replace("lora_A", "lora_B").replace("lora_down", "lora_up")]
            scale = float(lora[name + ".alpha"]) / lora[key].shape[0] if name + ".alpha" in lora else 1.0
            weight = kohya[name] if layout == "kohya" else name[len("diffusion_model."):] + ".weight"
            sai[weight] = sai[weight] + 0.7 * scale * (up @ lora[key])
        want = sd3_to_diffusers(sai)
    got = _weights(patched)
    assert sum(not torch.equal(got[k], before[k]) for k in got) > 10
    for key in got:
        assert torch.allclose(got[key], want[key], atol=1e-5), key
    assert all(torch.equal(v, before[k]) for k, v in _weights(model).items())


def test_flux_and_sd3_loras_on_each_other_name_the_file(sd3_file, flux_file, tmp_path):
    path = make_flux_lora(tmp_path / "flux-on-sd3.safetensors", flux_file, layout="bfl")
    with pytest.raises(ModelError, match="flux-on-sd3.safetensors.*made for FLUX.1"):
        load_lora(load_diffusion_model(sd3_file), None, path, 1.0, 1.0)
    path = make_flux_lora(tmp_path / "sd3-on-flux.safetensors", sd3_file, layout="kohya")
    with pytest.raises(ModelError, match="sd3-on-flux.safetensors.*made for SD3"):
        load_lora(load_diffusion_model(flux_file), None, path, 1.0, 1.0)


# -- the released size, against diffusers' own LoRA converters (which only work at that size) -----------------
@pytest.mark.parametrize("layout", [pytest.param("kohya", marks=pytest.mark.slow), "bfl-control"])  # kohya: ~6 s
def test_full_size_flux_names_match_diffusers_lora_converters(tmp_path, layout):
    """At FLUX.1 dev's real size (19+38 blocks, width 3072; on the meta device) every (up rows, down) pair this
    loader makes equals what diffusers' kohya / BFL-control converters make, compared as products on a vector."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders import lora_conversion_utils as conv

    from comfykit.engine.models.lora_dit import _rows, read_dit_lora

    with torch.device("meta"):
        t = FluxTransformer2DModel(guidance_embeds=True)
    path = make_flux_lora(tmp_path / f"{layout}.safetensors", t, layout=layout, rank=2)
    convert = {"kohya": conv._convert_kohya_flux_lora_to_diffusers,
               "bfl-control": conv._convert_bfl_flux_control_lora_to_diffusers}[layout]
    ref = {k.removeprefix("transformer."): v for k, v in convert(dict(read_state_dict(path))).items()}
    patches = read_dit_lora(path, t)[0]
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for key, value in ref.items():
        if key.endswith("lora_A.weight"):
            module = key[:-len(".lora_A.weight")]
            (kind, parts, rows), = [e for e in patches[module + ".weight"] if e[0] == "lora"]
            if layout == "bfl-control" and module == "norm_out.linear":
                # diffusers' BFL-control converter swaps the halves of lora_A too (its rank rows), which pairs them
                # with the wrong lora_B columns; ComfyUI and we swap the output rows only, so undo that one
                value = torch.cat(value.chunk(2)[::-1])
            v = torch.randn(value.shape[1], generator=gen, dtype=torch.float64)
            want = ref[module + ".lora_B.weight"].double() @ (value.double() @ v)
            scale = float(parts["alpha"]) / parts["down"].shape[0] if "alpha" in parts else 1.0
            if module in ("proj_out", "norm_out.linear"):
                scale = 1.0  # diffusers leaves final_layer's alpha out ("TODO: alphas"); ComfyUI and we apply it
            got = _rows(parts["up"].double(), rows) @ (parts["down"].double() @ v) * scale
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
            checked += 1
        elif key.endswith(("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")):
            (kind, weight, rows), = patches[key]
            assert kind == "set" and torch.equal(weight, value)
        elif key.endswith("lora_B.bias"):
            (kind, bias, rows), = patches[key[:-len(".lora_B.bias")] + ".bias"]
            assert kind == "diff" and torch.equal(_rows(bias, rows), value)
    assert checked > 300
