"""Conditioning and latent nodes of the FLUX/SD3/edit workflows, and the extra input channels of inpainting and
InstructPix2Pix UNets (ComfyUI's concat_cond), on the tiny SD1 demo checkpoint."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from comfykit.engine.models import load_checkpoint  # noqa: E402
from comfykit.engine.models.family import DiffusionModel  # noqa: E402
from comfykit.engine.sampling.ksampler import common_ksampler  # noqa: E402
from comfykit.nodes.conditioning_ops import (  # noqa: E402
    ConditioningSetTimestepRange,
    ConditioningZeroOut,
    InpaintModelConditioning,
    InstructPixToPixConditioning,
)
from comfykit.nodes.flux_sd3 import (  # noqa: E402
    EmptySD3LatentImage,
    FluxGuidance,
    FluxKontextImageScale,
    ReferenceLatent,
)


class _Engine:
    """What a node needs of the engine outside a run: ``call_with``."""

    @staticmethod
    def call_with(fn, *models):
        return fn()


def _node(cls):
    return cls(_Engine())


@pytest.fixture(scope="module")
def sd1(models_dir, ckpt_name):
    return load_checkpoint(models_dir / "checkpoints" / ckpt_name)


def _with_in_channels(model: DiffusionModel, channels: int) -> DiffusionModel:
    """The demo UNet with a first conv taking ``channels`` inputs (random extra weights): an inpaint/IP2P model."""
    from dataclasses import replace

    from comfykit.engine.models.unet import UNetModel

    config = replace(model.config, in_channels=channels)
    torch.manual_seed(0)
    network = UNetModel(config)
    sd = dict(model.network.state_dict())
    w = sd["input_blocks.0.0.weight"]
    sd["input_blocks.0.0.weight"] = torch.cat([w, torch.randn(w.shape[0], channels - w.shape[1], *w.shape[2:]) * .1],
                                              dim=1)
    network.load_state_dict(sd)
    return DiffusionModel(network, model.family, config, model.model_sampling)


def _cond(value=1.0, **opts):
    return [[torch.full((1, 77, 32), value), {"pooled_output": torch.ones(1, 32), **opts}]]


def test_empty_sd3_latent():
    latent = _node(EmptySD3LatentImage).generate(64, 48, 2)[0]["samples"]
    assert latent.shape == (2, 16, 6, 8) and not latent.any()


def test_flux_guidance_and_timestep_range_set_options_on_copies():
    cond = _cond(mask_strength=0.5)
    out = _node(FluxGuidance).append(cond, 2.5)[0]
    assert out[0][1]["guidance"] == 2.5 and out[0][1]["mask_strength"] == 0.5 and "guidance" not in cond[0][1]
    ranged = _node(ConditioningSetTimestepRange).set_range(out, 0.2, 0.6)[0]
    assert ranged[0][1]["start_percent"] == 0.2 and ranged[0][1]["end_percent"] == 0.6  # not 1 - x: 0.3.64's
    assert ranged[0][1]["guidance"] == 2.5


def test_conditioning_zero_out():
    cond = _cond(3.0) + [[torch.ones(1, 77, 32), {"pooled_output": None}]]
    out = _node(ConditioningZeroOut).zero_out(cond)[0]
    assert not out[0][0].any() and not out[0][1]["pooled_output"].any()
    assert out[0][1]["pooled_output"].shape == (1, 32) and out[1][1]["pooled_output"] is None
    assert cond[0][0].eq(3.0).all() and cond[0][1]["pooled_output"].eq(1.0).all()  # the input is left alone


def test_reference_latent_chains():
    a, b = {"samples": torch.zeros(1, 16, 4, 4)}, {"samples": torch.ones(1, 16, 2, 2)}
    node = _node(ReferenceLatent)
    cond = _cond()
    one = node.append(cond, a)[0]
    two = node.append(one, b)[0]
    assert [r.shape for r in two[0][1]["reference_latents"]] == [(1, 16, 4, 4), (1, 16, 2, 2)]
    assert len(one[0][1]["reference_latents"]) == 1 and "reference_latents" not in cond[0][1]
    assert node.append(cond)[0] is cond


@pytest.mark.parametrize("size,want", [((64, 32), (1456, 720)), ((40, 40), (1024, 1024)), ((30, 50), (800, 1328))])
def test_flux_kontext_image_scale_picks_the_closest_aspect(size, want):
    image = torch.rand(1, size[1], size[0], 3)
    out = _node(FluxKontextImageScale).scale(image)[0]
    assert out.shape == (1, want[1], want[0], 3)


def test_instruct_pix2pix_conditioning(sd1):
    _, _, vae = sd1
    pixels = torch.rand(1, 70, 67, 3)
    pos, neg, latent = _node(InstructPixToPixConditioning).encode(_cond(), _cond(0.0), vae, pixels)
    want = vae.encode(pixels[:, 3:67, 1:65])  # centre crop to 64x64
    assert torch.allclose(pos[0][1]["concat_latent_image"], want, atol=1e-6)
    assert neg[0][1]["concat_latent_image"] is pos[0][1]["concat_latent_image"]
    assert latent["samples"].shape == want.shape and not latent["samples"].any()


def test_inpaint_model_conditioning(sd1):
    _, _, vae = sd1
    pixels = torch.rand(1, 64, 64, 3)
    mask = torch.zeros(32, 32)
    mask[:, 16:] = 1.0  # repaint the right half; the mask is resized to the image
    pos, neg, latent = _node(InpaintModelConditioning).encode(_cond(), _cond(0.0), vae, pixels, mask, True)
    opts = pos[0][1]
    assert opts["concat_mask"].shape == (1, 1, 64, 64) and float(opts["concat_mask"][..., 40].min()) == 1.0
    grey = pixels.clone()
    grey[:, :, 32:] = 0.5
    assert torch.allclose(opts["concat_latent_image"], vae.encode(grey), atol=1e-5)
    assert torch.allclose(latent["samples"], vae.encode(pixels), atol=1e-6)
    assert latent["noise_mask"] is opts["concat_mask"] and neg[0][1]["concat_mask"] is opts["concat_mask"]
    _, _, no_mask = _node(InpaintModelConditioning).encode(_cond(), _cond(0.0), vae, pixels, mask, False)
    assert "noise_mask" not in no_mask


def test_inpainting_unet_concat(sd1):
    model = _with_in_channels(sd1[0], 9)
    x = torch.zeros(2, 4, 8, 8)
    raw = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 32:] = 0.7  # pixel size, rounded to 0/1 at latent size
    inputs = model.model_inputs(torch.zeros(1, 77, 32), {"concat_latent_image": raw, "concat_mask": mask}, x)
    assert inputs.concat.shape == (2, 5, 8, 8)
    assert torch.equal(inputs.concat[:, 0, :, 4:], torch.ones(2, 8, 4)) and not inputs.concat[:, 0, :, :4].any()
    assert torch.allclose(inputs.concat[:, 1:], (raw * 0.18215).expand(2, -1, -1, -1))  # model space
    # no InpaintModelConditioning: the run's denoise mask and latent (already in model space)
    run = {"latent_image": torch.full((2, 4, 8, 8), 0.3), "denoise_mask": torch.ones(2, 4, 8, 8)}
    inputs = model.model_inputs(torch.zeros(1, 77, 32), run, x)
    assert torch.equal(inputs.concat[:, 1:], run["latent_image"]) and inputs.concat[:, 0].eq(1).all()
    # nothing at all: keep-everything mask and the latent of a blank image
    inputs = model.model_inputs(torch.zeros(1, 77, 32), {}, x)
    assert inputs.concat[:, 0].eq(1).all()
    assert inputs.concat[0, 1:, 0, 0].tolist() == pytest.approx([0.8223, -0.6876, 0.6364, 0.1380])


def test_ip2p_unet_concat_and_a_wrong_channel_count(sd1):
    model = _with_in_channels(sd1[0], 8)
    x = torch.zeros(1, 4, 8, 8)
    raw = torch.randn(1, 4, 16, 16)  # another size: resized (bilinear) to the latent
    inputs = model.model_inputs(torch.zeros(1, 77, 32), {"concat_latent_image": raw}, x)
    assert inputs.concat.shape == (1, 4, 8, 8)
    want = torch.nn.functional.interpolate(raw, size=(8, 8), mode="bilinear")  # raw, not scaled: ComfyUI's IP2P
    assert torch.allclose(inputs.concat, want)
    assert not model.model_inputs(torch.zeros(1, 77, 32), {"latent_image": x + 1}, x).concat.any()
    with pytest.raises(ValueError, match="takes 6 input channels"):
        _with_in_channels(sd1[0], 6).model_inputs(torch.zeros(1, 77, 32), {}, x)
    plain = sd1[0].model_inputs(torch.zeros(1, 77, 32), {"concat_latent_image": raw}, x)
    assert plain.concat is None  # a plain UNet ignores the option


def test_inpaint_model_samples_with_its_nine_channels(sd1):
    _, clip, vae = sd1
    model = _with_in_channels(sd1[0], 9)
    seen = []
    model.network.input_blocks[0][0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    pixels = torch.rand(1, 64, 64, 3)
    mask = torch.zeros(64, 64)
    mask[:, 32:] = 1.0
    cond = [[clip.encode("a cat")[0], {}]]
    pos, neg, latent = _node(InpaintModelConditioning).encode(cond, cond, vae, pixels, mask, True)
    out = common_ksampler(model, 0, 2, 3.0, "euler", "normal", pos, neg, latent)["samples"]
    assert seen and set(seen) == {9}
    # the noise mask keeps the left half (latent columns 0..3) on the original image's latent
    assert torch.allclose(out[..., :4], latent["samples"][..., :4], atol=1e-5)
    assert not torch.allclose(out[..., 4:], latent["samples"][..., 4:], atol=1e-3)


def test_kontext_scale_keeps_layout_and_colours():
    img = torch.tensor([1.0, 128 / 255, 0.0]).expand(1, 10, 20, 3)
    out = _node(FluxKontextImageScale).scale(img)[0]
    assert out.shape == (1, 720, 1456, 3)
    assert out[0, 360, 728].tolist() == pytest.approx([1.0, 128 / 255, 0.0], abs=1 / 255)


def test_inpaint_workflow_runs_on_an_inpainting_checkpoint(tmp_path, models_dir, ckpt_name):
    """LoadImage -> InpaintModelConditioning -> KSampler on a 9-channel checkpoint, through the Engine."""
    from PIL import Image
    from safetensors.torch import load_file, save_file

    from comfykit.engine import Engine

    sd = load_file(str(models_dir / "checkpoints" / ckpt_name))
    key = "model.diffusion_model.input_blocks.0.0.weight"
    sd[key] = torch.cat([sd[key], torch.full((sd[key].shape[0], 5) + tuple(sd[key].shape[2:]), 0.05)], dim=1)
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    save_file(sd, str(tmp_path / "models" / "checkpoints" / "inpaint.safetensors"))
    (tmp_path / "input").mkdir()
    rgba = Image.new("RGBA", (64, 64), (200, 30, 30, 255))
    rgba.paste((200, 30, 30, 0), (32, 0, 64, 64))  # transparent right half: LoadImage's mask is 1 there
    rgba.save(tmp_path / "input" / "photo.png")
    g = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "inpaint.safetensors"}},
         "2": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
         "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
         "4": {"class_type": "InpaintModelConditioning", "inputs": {
             "positive": ["3", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": ["2", 0], "mask": ["2", 1],
             "noise_mask": True}},
         "5": {"class_type": "KSampler", "inputs": {
             "model": ["1", 0], "seed": 1, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
             "positive": ["4", 0], "negative": ["4", 1], "latent_image": ["4", 2], "denoise": 1.0}},
         "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
         "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}}
    eng = Engine(tmp_path / "models", output_dir=tmp_path / "out", input_dir=tmp_path / "input",
                 temp_dir=tmp_path / "tmp", device="cpu", previews="none")
    try:
        result = eng.run(g)
    finally:
        eng.shutdown()
    assert result.status == "success" and result.image.size == (64, 64)
