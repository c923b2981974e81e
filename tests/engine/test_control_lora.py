"""Control-LoRAs: the ControlNet is the model's UNet encoder plus the file's deltas and tensors, built when sampling."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from comfykit import demo  # noqa: E402
from comfykit.engine.models import load_checkpoint  # noqa: E402
from comfykit.engine.models.checkpoint import read_state_dict  # noqa: E402
from comfykit.engine.models.control_lora import ENCODER  # noqa: E402
from comfykit.engine.models.controlnet import load_controlnet  # noqa: E402
from comfykit.engine.sampling.ksampler import common_ksampler  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402
from comfykit.nodes.controlnet import ControlNetApplyAdvanced  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two tiny SDXL checkpoints (different weights, same shapes) and a Control-LoRA for them."""
    base = tmp_path_factory.mktemp("control_lora")
    return {"sdxl": demo.make_checkpoint(base / "sdxl.safetensors", arch="sdxl", seed=1),
            "sdxl2": demo.make_checkpoint(base / "sdxl2.safetensors", arch="sdxl", seed=5),
            "lora": demo.make_controlnet(base / "control-lora-canny-rank4.safetensors", arch="sdxl-control-lora",
                                         seed=1)}


def _conds(seed=0):
    gen = torch.Generator().manual_seed(seed)
    options = {"pooled_output": torch.randn(1, 32, generator=gen)}
    return [[torch.randn(1, 77, 64, generator=gen), options]], [[torch.randn(1, 77, 64, generator=gen), options]]


def _hand_merged(lora_path, unet_sd):
    """The ControlNet a Control-LoRA means, merged by hand: UNet encoder + up @ down + the file's own tensors."""
    lora = {k: v for k, v in read_state_dict(lora_path).items() if k != "lora_controlnet"}
    out = {k: v.clone() for k, v in unet_sd.items() if k.startswith(ENCODER)}
    for key, value in lora.items():
        if key.endswith(".up"):
            w = key[:-3] + ".weight"
            out[w] = out[w] + (value.flatten(1) @ lora[key[:-3] + ".down"].flatten(1)).reshape(out[w].shape)
        elif not key.endswith(".down"):
            out[key] = value
    return {"control_model." + k: v for k, v in out.items()}


def test_control_lora_equals_the_hand_merged_controlnet(files):
    model = load_checkpoint(files["sdxl"])[0]
    cnet = load_controlnet(files["lora"])
    assert "SDXL Control-LoRA (rank 4" in repr(cnet.model)
    reference = load_controlnet(_hand_merged(files["lora"], model.network.state_dict()))
    gen = torch.Generator().manual_seed(0)
    x, ctx, hint = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, 64, generator=gen), \
        torch.rand(2, 3, 64, 64, generator=gen)
    y, t = model.encode_adm(torch.randn(2, 32, generator=gen), 64, 64), torch.tensor([400.0, 400.0])
    network = cnet.model.network
    network.check(model, "lora")
    ours = network.residuals(x, t, hint, ctx, y)
    theirs = reference.model.network.residuals(x, t, hint, ctx, y)
    for a, b in zip(ours["output"] + ours["middle"], theirs["output"] + theirs["middle"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_control_lora_follows_the_model_it_is_used_with(files):
    first, second = load_checkpoint(files["sdxl"])[0], load_checkpoint(files["sdxl2"])[0]
    cnet = load_controlnet(files["lora"])
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))

    def run(model, strength=1.0):
        positive, negative = _conds()
        if strength:
            positive, negative = ControlNetApplyAdvanced().apply_controlnet(positive, negative, cnet, hint,
                                                                            strength, 0.0, 1.0)
        else:  # strength 0 through the residual path (the apply node skips it altogether)
            applied = cnet.with_hint(hint.movedim(-1, 1), strength=0.0)
            positive = [[c, {**o, "control": applied}] for c, o in positive]
            negative = [[c, {**o, "control": applied}] for c, o in negative]
        return common_ksampler(model, 3, 2, 4.0, "euler", "simple", positive, negative,
                               {"samples": torch.zeros(1, 4, 8, 8)})["samples"]

    plain = common_ksampler(first, 3, 2, 4.0, "euler", "simple", *_conds(), {"samples": torch.zeros(1, 4, 8, 8)})
    steered = run(first)
    assert (steered - plain["samples"]).abs().max() > 0.05
    torch.testing.assert_close(run(first, 0.0), plain["samples"])
    built = cnet.model.network.built
    run(second)  # another UNet: the ControlNet is rebuilt from its weights
    assert cnet.model.network.built is not built
    a = built.net.down_blocks[-1].resnets[0].conv1.weight
    b = cnet.model.network.built.net.down_blocks[-1].resnets[0].conv1.weight
    assert not torch.equal(a, b)


def test_control_lora_for_another_family_is_a_model_error(files, tmp_path):
    sd1 = load_checkpoint(demo.make_checkpoint(tmp_path / "sd1.safetensors", arch="sd1"))[0]
    cnet = load_controlnet(files["lora"])
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(1, 77, 32, generator=gen)
    positive, negative = ControlNetApplyAdvanced().apply_controlnet([[cond, {}]], [[cond, {}]], cnet,
                                                                    torch.rand(1, 64, 64, 3), 1.0, 0.0, 1.0)
    with pytest.raises(ModelError, match=r"control-lora-canny-rank4.safetensors: this is an SDXL Control-LoRA .* "
                                         r"model is sd1"):
        common_ksampler(sd1, 1, 1, 4.0, "euler", "simple", positive, negative, {"samples": torch.zeros(1, 4, 8, 8)})
