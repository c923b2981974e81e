"""T5 tokenizer ids, T5 encoder parity with transformers (independent loading path), ComfyUI's T5 prompt semantics."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from safetensors.torch import save_file  # noqa: E402

from comfykit.engine.models import tiny_text_encoders as tiny  # noqa: E402
from comfykit.engine.models.checkpoint import read_state_dict  # noqa: E402
from comfykit.engine.models.t5 import build_t5, infer_t5_config, t5_state_dict, tokenize_t5  # noqa: E402
from comfykit.engine.models.t5_tokenizer import get_t5_tokenizer  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402


def test_t5_tokenizer_gives_t5_v1_1_ids():
    tok = get_t5_tokenizer()
    # verified by looking each id up in the vocabulary list of the vendored tokenizer.json (model.vocab[i]):
    # 3 "▁", 9 "a", 1202 "▁photo", 13 "▁of", 1712 "▁cat" ("▁a" is not a piece, so "a" splits as "▁" + "a"),
    # 71 "▁A", 5810 "▁Photo", 18911 "CAT", 6 ",", 41 "▁(", 1271 "red", 10 ":", 10917 "1.2", 61 ")";
    # and they equal transformers' T5TokenizerFast on the same file (whose ids end with the EOS 1 it appends)
    assert tok.encode("a photo of a cat") == [3, 9, 1202, 13, 3, 9, 1712]
    assert tok("a photo of a cat") == [3, 9, 1202, 13, 3, 9, 1712, 1]
    assert tok.encode("A  Photo\nof a CAT, (red:1.2)") == [71, 5810, 13, 3, 9, 3, 18911, 6, 41, 1271, 10, 10917, 61]
    assert tok("") == [1] and tok.vocab_size == 32100


def test_t5_tokenizer_matches_transformers_on_the_same_vocabulary(tmp_path):
    import gzip

    from comfykit.engine.models.t5_tokenizer import VOCAB_FILE

    (tmp_path / "tokenizer.json").write_bytes(gzip.decompress(VOCAB_FILE.read_bytes()))
    hf = transformers.T5TokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    tok = get_t5_tokenizer()
    for text in ["a photo of a cat", "  Two   spaces,\nnewline\ttab ", "Ünïcödé café: 1,234.5 km/h!", "", "x" * 40,
                 "a (red:1.2) cat", "émoji 🐱 and 日本語"]:
        assert tok(text) == hf(text)["input_ids"], text


def test_t5_prompt_tokens_follow_comfyui():
    # weighted segments are tokenized on their own; then </s>; pad 0 up to the family's minimum, never truncated
    assert tokenize_t5("a photo of a (cat:1.5)", 10) == [
        (3, 1.0), (9, 1.0), (1202, 1.0), (13, 1.0), (3, 1.0), (9, 1.0), (1712, 1.5), (1, 1.0), (0, 1.0), (0, 1.0)]
    assert len(tokenize_t5("cat " * 300, 256)) == 301
    assert tokenize_t5("", 77) == [(1, 1.0)] + [(0, 1.0)] * 76


def _hf_t5(tmp_path, gated: bool):
    """A tiny transformers T5EncoderModel saved with save_pretrained, and the same weights as a ComfyUI t5xxl file."""
    cfg = transformers.T5Config(vocab_size=32128, d_model=32, d_kv=8, num_heads=6, d_ff=40, num_layers=3,
                                relative_attention_num_buckets=16, feed_forward_proj="gated-gelu" if gated else "relu",
                                is_encoder_decoder=False, use_cache=False)
    torch.manual_seed(3)
    model = transformers.T5EncoderModel(cfg).eval()
    with torch.no_grad():  # norms start at 1: perturb them so a wrong norm cannot hide
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "hf")
    sd = {k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "t5xxl.safetensors"))
    return tmp_path / "hf", tmp_path / "t5xxl.safetensors"


@pytest.mark.parametrize("gated", [True, False], ids=["v1.1-gated-gelu", "v1.0-relu"])
def test_t5_matches_transformers_loaded_from_its_folder(tmp_path, gated):
    folder, file = _hf_t5(tmp_path, gated)
    ref = transformers.T5EncoderModel.from_pretrained(folder).eval()
    ours = build_t5(read_state_dict(file))
    cfg = ours.config
    assert (cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.d_ff, cfg.num_layers) == (32, 8, 6, 40, 3)
    assert (cfg.relative_attention_num_buckets, cfg.is_gated_act) == (16, gated)
    ids = torch.tensor([[3, 9, 1202, 13, 3, 9, 1712, 1] + [0] * 12])
    with torch.no_grad():
        expected = ref(input_ids=ids).last_hidden_state
        torch.testing.assert_close(ours(ids), expected, atol=1e-5, rtol=1e-5)
        # CLIPSetLastLayer(-2) reaches T5: block -2's output through the final norm = a T5 with one block less
        short = transformers.T5EncoderModel.from_pretrained(folder).eval()
        short.encoder.block = short.encoder.block[:-1]
        torch.testing.assert_close(ours(ids, layer_idx=-2), short(input_ids=ids).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)


def test_t5_loads_from_checkpoint_prefixes_and_embed_tokens_layouts():
    sd = tiny.t5xxl_state_dict(d_model=32, num_layers=1)
    plain = build_t5(sd)
    prefixed = build_t5(tiny.checkpoint_keys({"t5xxl": sd}) | {"text_encoders.clip_l.transformer.x": torch.zeros(1)})
    renamed = {("encoder.embed_tokens.weight" if k == "shared.weight" else k): v for k, v in sd.items()}
    ids = torch.tensor([[3, 9, 1712, 1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(prefixed(ids), plain(ids))
        torch.testing.assert_close(build_t5(renamed)(ids), plain(ids))
    assert "encoder.block.0.layer.0.SelfAttention.q.weight" in t5_state_dict(tiny.checkpoint_keys({"t5xxl": sd}))


def test_t5_prompt_weights_interpolate_from_the_empty_prompt():
    t5 = build_t5(tiny.t5xxl_state_dict(d_model=32))
    plain = t5.encode_tokens(tokenize_t5("a red cat", 12))
    weighted = t5.encode_tokens(tokenize_t5("a red (cat:1.5)", 12))
    empty = t5.encode_tokens([(1, 1.0)] + [(0, 1.0)] * 11)  # ComfyUI's empty tokens: </s> then padding
    assert plain.shape == (1, 12, 32) and plain.dtype == torch.float32
    cat = [i for i, (t, _) in enumerate(tokenize_t5("a red (cat:1.5)", 12)) if t == 1712][0]
    expected = plain.clone()
    expected[0, cat] = (plain[0, cat] - empty[0, cat]) * 1.5 + empty[0, cat]
    torch.testing.assert_close(weighted, expected, atol=1e-5, rtol=1e-5)


def test_broken_t5_files_raise_model_errors():
    sd = tiny.t5xxl_state_dict(d_model=32, num_layers=1)
    del sd["encoder.block.0.layer.1.DenseReluDense.wo.weight"]
    with pytest.raises(ModelError, match="do not fit"):
        build_t5(sd)
    with pytest.raises(ModelError, match="incomplete"):
        build_t5({k: v for k, v in sd.items() if "SelfAttention.q." not in k})
    bad_shape = dict(tiny.t5xxl_state_dict(d_model=32, num_layers=1))
    bad_shape["encoder.block.0.layer.0.SelfAttention.k.weight"] = torch.zeros(5, 32)
    with pytest.raises(ModelError, match="do not fit together"):
        build_t5(bad_shape)
    umt5 = tiny.t5xxl_state_dict(d_model=32, num_layers=2)
    umt5["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = torch.zeros(32, 4)
    with pytest.raises(ModelError, match="UMT5"):
        infer_t5_config(t5_state_dict(umt5))


def test_real_t5_xxl_shapes_give_comfyuis_config():
    # the layout of t5xxl_fp16.safetensors, as shapes only (meta tensors)
    d, ff = 4096, 10240
    shapes = {"shared.weight": (32128, d), "encoder.final_layer_norm.weight": (d,),
              "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 64)}
    for i in range(24):
        for name, shape in (("0.SelfAttention.q", (d, d)), ("0.SelfAttention.k", (d, d)), ("0.SelfAttention.v", (d, d)),
                            ("0.SelfAttention.o", (d, d)), ("0.layer_norm", (d,)), ("1.layer_norm", (d,)),
                            ("1.DenseReluDense.wi_0", (ff, d)), ("1.DenseReluDense.wi_1", (ff, d)),
                            ("1.DenseReluDense.wo", (d, ff))):
            shapes[f"encoder.block.{i}.layer.{name}.weight"] = shape
    xxl = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
    assert set(tiny.t5xxl_state_dict(d_model=2, num_layers=1, vocab_size=4)) <= set(xxl)  # the writer's layout
    cfg = infer_t5_config(xxl)
    assert (cfg.d_model, cfg.d_kv, cfg.num_heads, cfg.d_ff, cfg.num_layers) == (d, 64, 64, ff, 24)
    assert cfg.vocab_size == 32128
    assert cfg.relative_attention_num_buckets == 32 and cfg.is_gated_act and cfg.dense_act_fn == "gelu_new"
    assert build_t5(xxl).num_layers == 24  # builds on the meta device: no memory
