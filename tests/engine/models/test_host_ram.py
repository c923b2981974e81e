"""Host RAM while loading: files are memory-mapped, conversions release what they replace, fp8 stays fp8."""

from __future__ import annotations

import gc
import weakref

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import save_file  # noqa: E402

from comfykit.engine.models import fp8, tiny_dit  # noqa: E402
from comfykit.engine.models.checkpoint import _load_module, load_diffusion_model, read_state_dict  # noqa: E402
from comfykit.engine.models.dit_common import trace_sources  # noqa: E402
from comfykit.engine.models.flux import flux_to_diffusers  # noqa: E402

E4M3 = torch.float8_e4m3fn
LINEAR_LEAVES = ("qkv", "proj", "linear1", "linear2", "lin", "in_layer", "out_layer", "0", "2", "1", "linear")


def _scaled_fp8(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's scaled fp8 layout: every 2-d Linear weight as fp8 w / s, plus `.scale_weight` s and the marker."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".weight") and value.ndim == 2 and key.rsplit(".", 2)[-2] in LINEAR_LEAVES:
            scale = value.abs().max().float() / 200  # fp8 e4m3 tops at 448: keep values well inside it
            out[key] = (value.float() / scale).to(E4M3)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
            out[key[: -len("weight")] + "scale_input"] = torch.tensor(1.0)
        else:
            out[key] = value
    out["scaled_fp8"] = torch.empty(0, dtype=E4M3)
    return out


def test_read_state_dict_maps_each_tensor_lazily(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16),
               "c": torch.zeros(3, dtype=E4M3), "empty": torch.zeros(0)}, str(path))
    sd = read_state_dict(path)
    assert sd["a"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert sd["b"].dtype == torch.float16 and sd["c"].dtype == E4M3  # stored dtypes, fp8 included
    assert sd["empty"].shape == (0,)
    sd["a"] += 1  # copy-on-write: the file is never changed through a loaded tensor
    assert read_state_dict(path)["a"][0, 0].item() == 0.0


def test_converting_while_loading_releases_each_original():
    linear = torch.nn.Linear(4, 4)
    sd = {k: v.detach().clone() for k, v in linear.state_dict().items()}
    originals = [weakref.ref(v) for v in sd.values()]
    module = _load_module(lambda: torch.nn.Linear(4, 4), sd, "test", "linear.safetensors", "cpu", torch.float64)
    gc.collect()
    assert module.weight.dtype == torch.float64
    assert all(ref() is None for ref in originals)  # no second copy kept alive by the loader


def test_trace_sources_follows_fused_splits():
    bfl = tiny_dit.flux_pieces(prefix="")
    sources = trace_sources(lambda d: flux_to_diffusers(d, consume=True), bfl)
    assert sources["transformer_blocks.0.attn.to_q.weight"] == "double_blocks.0.img_attn.qkv.weight"
    assert sources["transformer_blocks.0.attn.add_v_proj.weight"] == "double_blocks.0.txt_attn.qkv.weight"
    assert sources["single_transformer_blocks.0.proj_mlp.weight"] == "single_blocks.0.linear1.weight"
    assert sources["norm_out.linear.weight"] == "final_layer.adaLN_modulation.1.weight"


def test_scaled_fp8_flux_stays_fp8_and_matches_the_dequantized_model(tmp_path):
    bfl = tiny_dit.flux_pieces(prefix="model.diffusion_model.")
    scaled = _scaled_fp8(bfl)
    save_file(scaled, str(tmp_path / "scaled.safetensors"))
    save_file(fp8.dequantize(scaled), str(tmp_path / "plain.safetensors"))
    model = load_diffusion_model(tmp_path / "scaled.safetensors")
    plain = load_diffusion_model(tmp_path / "plain.safetensors")

    block = model.network.transformer.transformer_blocks[0].attn
    fused_scale = scaled["model.diffusion_model.double_blocks.0.img_attn.qkv.scale_weight"]
    for layer in (block.to_q, block.to_k, block.to_v):  # the split qkv shares the fused weight's one scale
        assert isinstance(layer, fp8.CastLinear) and layer.weight.dtype == E4M3
        assert layer.scale_weight.item() == pytest.approx(fused_scale.item())
    assert fp8.storage_bytes(model.network) < 0.5 * fp8.storage_bytes(plain.network)

    g = torch.Generator().manual_seed(0)
    x, context, pooled = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g), None
    t = torch.tensor([500.0])
    want = plain(x, t, context, pooled)
    got = model(x, t, context, pooled)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
