"""Union ControlNets (ControlNet++ / ProMax): residuals equal diffusers' ControlNetUnionModel for a set control type,
"auto" follows ComfyUI (no type token), SetUnionControlNetType steers sampling, a type the file lacks is an error."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import tiny_graphs  # noqa: E402

from comfykit import demo  # noqa: E402
from comfykit.engine.models import load_checkpoint  # noqa: E402
from comfykit.engine.models.controlnet import load_controlnet  # noqa: E402
from comfykit.engine.models.tiny_controlnet import make_controlnet, tiny_union_controlnet  # noqa: E402
from comfykit.engine.sampling.ksampler import common_ksampler  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402
from comfykit.nodes.controlnet import ControlNetApplyAdvanced, SetUnionControlNetType  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("union")
    sdxl = load_checkpoint(demo.make_checkpoint(base / "sdxl.safetensors", arch="sdxl", seed=1))[0]
    union = make_controlnet(base / "union" / "diffusion_pytorch_model.safetensors", arch="sdxl-union",
                            layout="diffusers", seed=1)
    promax = make_controlnet(base / "diffusion_pytorch_model_promax.safetensors", arch="sdxl-union-promax",
                             layout="diffusers", seed=2)
    return sdxl, union, promax


def _inputs(seed=0, batch=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 8, 8, generator=gen), torch.randn(batch, 77, 64, generator=gen),
            torch.randn(batch, 32, generator=gen), torch.rand(batch, 3, 64, 64, generator=gen))


def _diffusers(net, x, t, ctx, pooled, hint, onehot, index):
    with torch.no_grad():
        return net(x, t, ctx, controlnet_cond=[hint], control_type=onehot, control_type_idx=[index],
                   added_cond_kwargs={"text_embeds": pooled,
                                      "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * x.shape[0])},
                   return_dict=False)


def _check(ours, theirs):
    down, mid = theirs
    assert len(ours["output"]) == len(down)
    for a, b in zip(ours["output"], down):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["middle"][0], mid, atol=1e-4, rtol=1e-4)


def test_single_file_folder_and_promax_load(models, tmp_path):
    _, union, promax = models
    reference = tiny_union_controlnet(1).state_dict()
    for path in (union, make_controlnet(tmp_path / "folder", arch="sdxl-union", layout="diffusers-folder", seed=1)):
        got = load_controlnet(path).model.network.net.state_dict()
        assert set(got) == set(reference) and all(torch.equal(got[k], v) for k, v in reference.items())
    assert "union with 6 control types" in repr(load_controlnet(union).model)
    assert "union ProMax with 8 control types" in repr(load_controlnet(promax).model)


@pytest.mark.parametrize("index", [1, 3])  # depth, canny
def test_residuals_for_a_control_type_equal_diffusers(models, index):
    sdxl, union, _ = models
    net = load_controlnet(union).model.network
    x, ctx, pooled, hint = _inputs(index)
    t = torch.tensor([600.0])
    ours = net.residuals(x, t, hint, ctx, sdxl.encode_adm(pooled, 64, 64), union_type=index)
    onehot = torch.nn.functional.one_hot(torch.tensor([index]), 6).float()
    _check(ours, _diffusers(tiny_union_controlnet(1), x, t, ctx, pooled, hint, onehot, index))


def test_auto_embeds_no_type_and_uses_the_plain_hint(models):
    sdxl, union, _ = models
    net = load_controlnet(union).model.network
    x, ctx, pooled, hint = _inputs(5)
    t = torch.tensor([300.0])
    y = sdxl.encode_adm(pooled, 64, 64)
    auto = net.residuals(x, t, hint, ctx, y, union_type=None)
    depth = net.residuals(x, t, hint, ctx, y, union_type=1)
    assert (auto["middle"][0] - depth["middle"][0]).abs().max() > 1e-3
    # diffusers with an all-zero type vector and the type token's projection silenced is ComfyUI's "auto"
    reference = tiny_union_controlnet(1)
    with torch.no_grad():
        reference.spatial_ch_projs.weight.zero_()
        reference.spatial_ch_projs.bias.zero_()
    _check(auto, _diffusers(reference, x, t, ctx, pooled, hint, torch.zeros(1, 6), 0))


def _sample(model, cnet, hint, strength=1.0, union_type="auto", steps=2):
    gen = torch.Generator().manual_seed(3)
    cond, uncond = torch.randn(1, 77, 64, generator=gen), torch.randn(1, 77, 64, generator=gen)
    options = {"pooled_output": torch.randn(1, 32, generator=gen)}
    positive, negative = [[cond, dict(options)]], [[uncond, dict(options)]]
    if cnet is not None:
        (typed,) = SetUnionControlNetType().set_controlnet_type(cnet, union_type)
        if strength == 0:  # through the residual path: the apply node skips strength 0 altogether
            applied = typed.with_hint(hint.movedim(-1, 1), strength=0.0)
            positive, negative = [[cond, {**options, "control": applied}]], [[uncond, {**options, "control": applied}]]
        else:
            positive, negative = ControlNetApplyAdvanced().apply_controlnet(positive, negative, typed, hint,
                                                                            strength, 0.0, 1.0)
    out = common_ksampler(model, 7, steps, 4.0, "euler", "simple", positive, negative,
                          {"samples": torch.zeros(1, 4, 8, 8)})
    return out["samples"]


def test_the_control_type_steers_sampling_and_strength_zero_is_no_control(models):
    sdxl, union, _ = models
    cnet = load_controlnet(union)
    hint = torch.rand(1, 80, 80, 3, generator=torch.Generator().manual_seed(4))
    plain = _sample(sdxl, None, hint)
    depth = _sample(sdxl, cnet, hint, union_type="depth")
    canny = _sample(sdxl, cnet, hint, union_type="canny/lineart/anime_lineart/mlsd")
    assert (depth - plain).abs().max() > 0.05
    assert (depth - canny).abs().max() > 1e-3
    torch.testing.assert_close(_sample(sdxl, cnet, hint, strength=0.0, union_type="depth"), plain)


def test_a_type_only_promax_has_is_an_error_pointing_to_promax(models):
    sdxl, union, promax = models
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    with pytest.raises(ModelError, match=r"diffusion_pytorch_model.safetensors: control type tile\(6\) is out of "
                                         r"range .*\(6\).*ProMax"):
        _sample(sdxl, load_controlnet(union), hint, union_type="tile", steps=1)
    _sample(sdxl, load_controlnet(promax), hint, union_type="tile", steps=1)


def test_union_controlnet_on_sd1_is_a_model_error(models, tmp_path):
    _, union, _ = models
    sd1 = load_checkpoint(demo.make_checkpoint(tmp_path / "sd1.safetensors", arch="sd1"))[0]
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(1, 77, 32, generator=gen)
    positive, negative = ControlNetApplyAdvanced().apply_controlnet(
        [[cond, {}]], [[cond, {}]], load_controlnet(union), torch.rand(1, 64, 64, 3), 1.0, 0.0, 1.0)
    with pytest.raises(ModelError, match=r"diffusion_pytorch_model.safetensors: this is an SDXL ControlNet .*union"
                                         r".* model is sd1"):
        common_ksampler(sd1, 1, 1, 4.0, "euler", "simple", positive, negative, {"samples": torch.zeros(1, 4, 8, 8)})


def test_union_workflow_runs_on_the_engine(tmp_path):
    """ControlNetLoader -> SetUnionControlNetType -> ControlNetApplyAdvanced -> KSampler, as users wire it."""
    import numpy as np
    from PIL import Image

    from comfykit.engine import Engine

    models, inputs = tmp_path / "models", tmp_path / "input"
    demo.make_checkpoint(models / "checkpoints" / "sdxl.safetensors", arch="sdxl", seed=1)
    make_controlnet(models / "controlnet" / "union_promax.safetensors", arch="sdxl-union-promax",
                    layout="diffusers", seed=2)
    inputs.mkdir(parents=True)
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")).save(inputs / "hint.png")

    def prompt(kind):
        p = tiny_graphs.t2i("sdxl.safetensors", save=False)
        p["3"]["inputs"].update(positive=["12", 0], negative=["12", 1])
        p.update({"10": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "union_promax.safetensors"}},
                  "11": {"class_type": "SetUnionControlNetType", "inputs": {"control_net": ["10", 0], "type": kind}},
                  "13": {"class_type": "LoadImage", "inputs": {"image": "hint.png"}},
                  "12": {"class_type": "ControlNetApplyAdvanced", "inputs": {
                      "positive": ["6", 0], "negative": ["7", 0], "control_net": ["11", 0], "image": ["13", 0],
                      "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}})
        return p

    engine = Engine(models, output_dir=tmp_path / "out", input_dir=inputs, temp_dir=tmp_path / "tmp",
                    device="cpu", previews="none")
    try:
        tile, depth = (np.asarray(engine.run(prompt(k)).image, dtype=float) for k in ("tile", "depth"))
    finally:
        engine.shutdown()
    assert np.abs(tile - depth).max() > 0  # the type reaches the network
