"""fp8 and scaled fp8 weights: same outputs as upcasting the whole state dict first, weights stay fp8 in memory."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from comfykit.engine.models import fp8  # noqa: E402
from comfykit.engine.models import tiny_text_encoders as tiny  # noqa: E402
from comfykit.engine.models.checkpoint import read_state_dict  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
IDS = torch.tensor([[3, 9, 1202, 13, 3, 9, 1712, 1] + [0] * 8])


@pytest.fixture(scope="module")
def t5_sd():
    return tiny.t5xxl_state_dict(d_model=32, d_ff=48)


@pytest.mark.parametrize("dtype, scaled", [(E4M3, False), (E5M2, False), (E4M3, True)],
                         ids=["e4m3fn", "e5m2", "e4m3fn-scaled"])
def test_fp8_t5_file_equals_upcast_state_dict(tmp_path, t5_sd, dtype, scaled):
    pytest.importorskip("transformers")
    from comfykit.engine.models.t5 import build_t5

    path = tiny.write_t5xxl(tmp_path / "t5.safetensors", fp8=dtype, scaled=scaled, d_model=32, d_ff=48)
    sd = read_state_dict(path)  # fp8 passes through the reader unchanged
    assert sd["encoder.block.0.layer.0.SelfAttention.q.weight"].dtype == dtype
    assert ("scaled_fp8" in sd) == scaled
    ours = build_t5(sd)
    reference = build_t5(fp8.dequantize(sd))  # the whole state dict upcast to float32 first
    q = ours.model.encoder.block[0].layer[0].SelfAttention.q
    assert q.weight.dtype == dtype and isinstance(q, fp8.CastLinear)
    assert (q.scale_weight is not None) == scaled
    def linear_bytes(t5):
        return sum(m.weight.numel() * m.weight.element_size() for m in t5.modules() if isinstance(m, nn.Linear))

    assert linear_bytes(ours) * 4 == linear_bytes(reference)  # one byte per weight instead of four
    assert fp8.storage_bytes(ours) < fp8.storage_bytes(reference)
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS), reference(IDS), atol=1e-5, rtol=1e-5)
    # and the fp8 copy is close to the original float32 weights (the quantisation error only)
    exact = build_t5(t5_sd)
    with torch.no_grad():
        err = (ours(IDS) - exact(IDS)).abs().max()
    assert 0 < err < 0.5


def test_scaled_fp8_scales_ride_along_with_module_to(t5_sd):
    pytest.importorskip("transformers")
    from comfykit.engine.models.t5 import build_t5

    sd = tiny.to_fp8(t5_sd, E4M3, scaled=True, scale_input=True)
    t5 = build_t5(sd)
    before = t5(IDS)
    t5.to("cpu", torch.float16)  # what the model manager does on a GPU: fp8 stays fp8, the rest goes fp16
    q = t5.model.encoder.block[0].layer[0].SelfAttention.q
    assert q.weight.dtype == E4M3 and q.scale_weight.dtype == torch.float32 and q.scale_input is not None
    assert t5.model.encoder.final_layer_norm.weight.dtype == torch.float16
    torch.testing.assert_close(t5(IDS), before, atol=2e-2, rtol=2e-2)  # activations stay float32


def test_apply_fp8_is_generic():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))
    x = torch.randn(2, 8)
    w_scale = torch.tensor(0.01)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["0.weight"] = (sd["0.weight"] / w_scale).to(E4M3)  # scaled layer
    sd["0.scale_weight"] = w_scale
    sd["3.weight"] = sd["3.weight"].to(E5M2)  # plain fp8 layer
    sd["1.weight"] = sd["1.weight"].to(E4M3)  # an fp8 norm weight: upcast once
    weights, scales = fp8.split_scales(sd)
    model.load_state_dict(weights, assign=True)
    fp8.apply_fp8(model, sd)
    assert isinstance(model[0], fp8.CastLinear) and model[0].weight.dtype == E4M3
    assert isinstance(model[3], fp8.CastLinear) and model[3].weight.dtype == E5M2
    assert model[1].weight.dtype == torch.float32
    reference = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))
    reference.load_state_dict(fp8.dequantize(sd))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
        fp8.module_to(model, "cpu", torch.bfloat16)  # fp8 weights and scales keep their dtype, the rest is bf16
        assert model[0].weight.dtype == E4M3 and model[0].scale_weight.dtype == torch.float32
        assert model[3].weight.dtype == E5M2 and model[0].bias.dtype == model[1].weight.dtype == torch.bfloat16
        torch.testing.assert_close(model(x.bfloat16()).float(), reference(x), atol=0.05, rtol=0.05)
    with pytest.raises(ModelError, match="not a Linear"):
        fp8.apply_fp8(nn.Sequential(nn.Linear(2, 2)), {"1.scale_weight": torch.tensor(1.0)})


def test_quantize_fp8_stores_linear_weights_in_fp8():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 8))
    x = torch.randn(3, 8)
    expected = model(x)
    fp8.quantize_fp8(model, E4M3, compute_dtype=torch.float32)
    assert all(m.weight.dtype == E4M3 for m in (model[0], model[2]))
    torch.testing.assert_close(model(x), expected, atol=0.1, rtol=0.1)


def test_truncated_fp8_file_is_a_model_error(tmp_path):
    path = tiny.write_t5xxl(tmp_path / "t5_fp8.safetensors", fp8=E4M3, scaled=True, d_model=32, num_layers=1)
    data = path.read_bytes()
    cut = tmp_path / "t5_cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelError, match="truncated"):
        read_state_dict(cut)
    pt = tmp_path / "t5_fp8.pt"
    torch.save(read_state_dict(path), pt)
    assert read_state_dict(pt)["encoder.block.0.layer.0.SelfAttention.q.weight"].dtype == E4M3


def test_fp8_embedding_table_stays_fp8(t5_sd):
    pytest.importorskip("transformers")
    from comfykit.engine.models.t5 import build_t5

    sd = dict(t5_sd, **{"shared.weight": t5_sd["shared.weight"].to(E4M3)})
    t5 = build_t5(sd)
    assert isinstance(t5.model.shared, fp8.CastEmbedding) and t5.model.shared.weight.dtype == E4M3
    with torch.no_grad():
        torch.testing.assert_close(t5(IDS), build_t5(fp8.dequantize(sd))(IDS), atol=1e-5, rtol=1e-5)
