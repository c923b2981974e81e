"""LoRA files in kohya and diffusers/PEFT key styles patch clones by exactly the low-rank delta."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

from comfykit import demo  # noqa: E402
from comfykit.engine.models import load_lora  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402

Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"  # LDM name of one patched UNet weight
Q_DIFFUSERS = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"


def _expected_delta(lora: dict, base: str, style: str, strength: float) -> torch.Tensor:
    if style == "kohya":
        down, up = lora[base + ".lora_down.weight"], lora[base + ".lora_up.weight"]
        scale = float(lora[base + ".alpha"]) / down.shape[0]
    else:
        down, up, scale = lora[base + ".lora_A.weight"], lora[base + ".lora_B.weight"], 1.0
    return (up @ down) * scale * strength


@pytest.mark.parametrize("style", ["kohya", "diffusers"])
def test_lora_adds_the_low_rank_delta_to_clones(style, make_ckpt, sd1, tmp_path):
    model, clip, _ = sd1
    path = demo.make_lora(tmp_path / f"{style}.safetensors", make_ckpt("sd1"), style=style, rank=4)
    lora = load_file(str(path))
    before_q = model.unet.get_submodule(Q).weight.clone()
    before_te = clip.clips["clip_l"].get_submodule(TE_Q).weight.clone()

    m2, c2 = load_lora(model, clip, path, 0.8, 0.5)
    assert m2 is not model and c2 is not clip
    unet_base = ("lora_unet_" + Q_DIFFUSERS.replace(".", "_")) if style == "kohya" else "unet." + Q_DIFFUSERS
    te_base = ("lora_te_" + TE_Q.replace(".", "_")) if style == "kohya" else "text_encoder." + TE_Q
    torch.testing.assert_close(m2.unet.get_submodule(Q).weight - before_q,
                               _expected_delta(lora, unet_base, style, 0.8), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c2.clips["clip_l"].get_submodule(TE_Q).weight - before_te,
                               _expected_delta(lora, te_base, style, 0.5), atol=1e-5, rtol=1e-4)
    # the cached originals are untouched, and unpatched weights are shared, not copied
    assert torch.equal(model.unet.get_submodule(Q).weight, before_q)
    assert torch.equal(clip.clips["clip_l"].get_submodule(TE_Q).weight, before_te)
    assert m2.unet.out[2].weight is model.unet.out[2].weight
    x, cond = torch.randn(1, 4, 8, 8), clip.encode("a cat")[0]
    assert not torch.allclose(m2(x, torch.tensor([9.0]), cond), model(x, torch.tensor([9.0]), cond))
    assert not torch.allclose(c2.encode("a cat")[0], cond)


def test_strength_zero_is_identity(make_ckpt, sd1, tmp_path):
    model, clip, _ = sd1
    path = demo.make_lora(tmp_path / "l.safetensors", make_ckpt("sd1"))
    assert load_lora(model, clip, path, 0.0, 0.0) == (model, clip)
    m2, c2 = load_lora(model, clip, path, 0.0, 1.0)
    assert m2 is model and c2 is not clip


def test_sdxl_lora_uses_te1_and_te2(make_ckpt, sdxl, tmp_path):
    model, clip, _ = sdxl
    path = demo.make_lora(tmp_path / "xl.safetensors", make_ckpt("sdxl"), style="kohya")
    names = load_file(str(path))
    assert any(k.startswith("lora_te1_") for k in names) and any(k.startswith("lora_te2_") for k in names)
    _, c2 = load_lora(model, clip, path, 1.0, 1.0)
    for name in ("clip_l", "clip_g"):
        assert not torch.equal(c2.clips[name].get_submodule(TE_Q).weight, clip.clips[name].get_submodule(TE_Q).weight)


def test_lora_for_another_model_family(make_ckpt, sd1, tmp_path):
    model, clip, _ = sd1
    xl = demo.make_lora(tmp_path / "xl.safetensors", make_ckpt("sdxl"))
    with pytest.raises(ModelError, match="different model family"):
        load_lora(model, clip, xl, 1.0, 1.0)
    with pytest.raises(ModelError, match="no LoRA keys"):
        load_lora(model, clip, make_ckpt("sd1"), 1.0, 1.0)
    # some keys match, some do not: it loads and warns
    lora = load_file(str(demo.make_lora(tmp_path / "sd1.safetensors", make_ckpt("sd1"))))
    lora["lora_unet_no_such_block.lora_down.weight"] = torch.zeros(4, 8)
    lora["lora_unet_no_such_block.lora_up.weight"] = torch.zeros(8, 4)
    save_file(lora, str(tmp_path / "partial.safetensors"))
    with pytest.warns(UserWarning, match="1 of .* match nothing"):
        load_lora(model, clip, tmp_path / "partial.safetensors", 1.0, 1.0)


@pytest.mark.parametrize("down_key, up_key", [
    ("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight",  # kohya, LDM names
     "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_up.weight"),
    (f"unet.{Q_DIFFUSERS}.lora.down.weight", f"unet.{Q_DIFFUSERS}.lora.up.weight"),  # older diffusers
    (f"unet.{Q_DIFFUSERS.replace('to_q', 'processor.to_q_lora')}.down.weight",  # attention-processor LoRA
     f"unet.{Q_DIFFUSERS.replace('to_q', 'processor.to_q_lora')}.up.weight"),
    (f"unet.{Q_DIFFUSERS}.lora_A.weight", f"unet.{Q_DIFFUSERS}.lora_B.weight"),  # PEFT
], ids=["kohya-ldm", "diffusers-lora.down", "processor", "peft"])
def test_lora_key_variants(down_key, up_key, sd1, tmp_path):
    model, clip, _ = sd1
    gen = torch.Generator().manual_seed(1)
    w = model.unet.get_submodule(Q).weight
    down, up = torch.randn(2, w.shape[1], generator=gen), torch.randn(w.shape[0], 2, generator=gen)
    save_file({down_key: down, up_key: up}, str(tmp_path / "v.safetensors"))
    m2, _ = load_lora(model, clip, tmp_path / "v.safetensors", 1.0, 1.0)
    torch.testing.assert_close(m2.unet.get_submodule(Q).weight - w, up @ down, atol=1e-5, rtol=1e-4)
