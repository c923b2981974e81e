"""Tokenizer ids, ComfyUI prompt weighting, 75-token chunking, CLIPSetLastLayer and textual inversions."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import save_file  # noqa: E402

from comfykit.engine.models.text_encoder import parse_weights  # noqa: E402
from comfykit.engine.models.tokenizer import get_tokenizer  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402


def test_tokenizer_gives_openai_clip_ids():
    tok = get_tokenizer()
    assert tok("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("A  Photo\nof a CAT") == tok("a photo of a cat")  # lower-cased, whitespace collapsed
    assert tok("") == [49406, 49407]
    assert tok.encode("cat,dog") == tok.encode("cat") + tok.encode(",") + tok.encode("dog")


@pytest.mark.parametrize("text, expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
    ("((cat))", [("cat", pytest.approx(1.21))]),
    ("(red cat:1.3), dog", [("red cat", 1.3), (", dog", 1.0)]),
    ("((red:1.5) cat)", [("red", 1.5), (" cat", pytest.approx(1.1))]),
    (r"\(literal\) (x:0.5)", [("(literal) ", 1.0), ("x", 0.5)]),
    ("time 12:30 (a:b)", [("time 12:30 ", 1.0), ("a:b", pytest.approx(1.1))]),
])
def test_prompt_weight_syntax(text, expected):
    assert parse_weights(text) == expected


def test_weighted_tokens_move_away_from_the_empty_prompt(sd1):
    _, clip, _ = sd1
    plain, _ = clip.encode("a cat")
    weighted, _ = clip.encode("a (cat:1.5)")
    empty, _ = clip.encode("")
    # BOS a cat EOS: only position 2 has weight 1.5, z = (z - z_empty) * w + z_empty
    expected = plain.clone()
    expected[0, 2] = (plain[0, 2] - empty[0, 2]) * 1.5 + empty[0, 2]
    torch.testing.assert_close(weighted, expected, atol=1e-5, rtol=1e-5)


def test_long_prompts_are_chunked_by_75_tokens(sd1, sdxl):
    text = " ".join(["cat"] * 100)
    chunks = sd1[1].tokenize(text)
    assert [len(c) for c in chunks] == [77, 27]
    assert chunks[1][0][0] == 49406 and chunks[1][-1][0] == 49407
    cond, pooled = sd1[1].encode(text)
    assert cond.shape == (1, 154, 32) and pooled.shape == (1, 32)
    assert sdxl[1].encode(text)[0].shape == (1, 154, 64)
    # a short word (4 tokens) that does not fit moves whole to the next chunk; a long one (14) is split
    short = sd1[1].tokenize("cat " * 73 + "comfykitish")
    assert [len(c) for c in short] == [75, 6]
    long = sd1[1].tokenize("cat " * 73 + "qwertzuiopasdfghjklyxcvbnm")
    assert [len(c) for c in long] == [77, 14]


def test_set_last_layer_changes_a_clone_only(sd1):
    _, clip, _ = sd1
    base, _ = clip.encode("a cat")
    clone = clip.clone().set_last_layer(-2)
    assert not torch.allclose(clone.encode("a cat")[0], base)
    torch.testing.assert_close(clip.encode("a cat")[0], base)
    assert clip.clone().set_last_layer(-24).slots[0].layer_idx == -2  # clamped to the layers the model has
    with pytest.raises(ValueError, match="negative"):
        clip.clone().set_last_layer(1)


def test_textual_inversion_from_embeddings_folder(sd1, sdxl, tmp_path):
    gen = torch.Generator().manual_seed(0)
    save_file({"emb_params": torch.randn(2, 32, generator=gen)}, str(tmp_path / "mystyle.safetensors"))
    save_file({"clip_l": torch.randn(1, 32, generator=gen), "clip_g": torch.randn(1, 32, generator=gen)},
              str(tmp_path / "xlstyle.safetensors"))
    clip = sd1[1].clone()
    clip.embeddings_dir = tmp_path
    assert len(clip.tokenize("embedding:mystyle cat")[0]) == 5  # BOS, 2 vectors, cat, EOS
    with_emb, _ = clip.encode("embedding:mystyle cat")
    assert not torch.allclose(with_emb, clip.encode("cat")[0][:, :77])
    with pytest.warns(UserWarning, match="not found"):
        clip.encode("embedding:nosuch cat")
    xl = sdxl[1].clone()
    xl.embeddings_dir = tmp_path
    assert xl.encode("embedding:xlstyle, cat")[0].shape == (1, 77, 64)
    with pytest.raises(ModelError, match="wrong model family"):
        save_file({"emb_params": torch.zeros(1, 768)}, str(tmp_path / "big.safetensors"))
        clip.encode("embedding:big")
