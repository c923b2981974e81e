"""Inpainting with a noise mask on the SD1 demo checkpoint: LoadImage's alpha -> SetLatentNoiseMask -> KSampler.

The sampler guarantees the unmasked region exactly in latent space. An SD VAE decoder mixes the whole latent into
every pixel (GroupNorm statistics, mid-block attention), so pixel-exact unmasked regions come from compositing the
result onto the VAE round trip through the same mask, as inpainting workflows do with ImageCompositeMasked.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")


def _picture(folder, size=64, hole=(16, 48, 40, 64), name="holey.png"):
    """Random colours, opaque except a transparent hole (rows y0:y1, columns x0:x1) to repaint."""
    rng = np.random.default_rng(0)
    arr = np.zeros((size, size, 4), np.uint8)
    arr[..., :3] = rng.integers(0, 256, (size, size, 3))
    arr[..., 3] = 255
    y0, y1, x0, x1 = hole
    arr[y0:y1, x0:x1, 3] = 0
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGBA").save(folder / name)
    return name


def _graph(ckpt: str, image: str) -> dict:
    def n(class_type, **inputs):
        return {"class_type": class_type, "inputs": inputs}

    return {
        "1": n("LoadImage", image=image),
        "2": n("CheckpointLoaderSimple", ckpt_name=ckpt),
        "3": n("VAEEncode", pixels=["1", 0], vae=["2", 2]),
        "4": n("SetLatentNoiseMask", samples=["3", 0], mask=["1", 1]),
        "5": n("CLIPTextEncode", text="a red ball", clip=["2", 1]),
        "6": n("CLIPTextEncode", text="", clip=["2", 1]),
        "7": n("KSampler", model=["2", 0], seed=5, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
               positive=["5", 0], negative=["6", 0], latent_image=["4", 0], denoise=1.0),
        "8": n("VAEDecode", samples=["7", 0], vae=["2", 2]),
        "9": n("VAEDecode", samples=["3", 0], vae=["2", 2]),  # the VAE round trip of the input
        "10": n("ImageCompositeMasked", destination=["9", 0], source=["8", 0], x=0, y=0, resize_source=False,
                mask=["1", 1]),
        "11": n("PreviewImage", images=["10", 0]),
        "12": n("PreviewImage", images=["9", 0]),
        "13": n("PreviewImage", images=["8", 0]),
    }


def test_only_the_masked_region_changes(engine, ckpt_name):
    image = _picture(engine.folders.input)
    result = engine.execute(_graph(ckpt_name, image), prompt_id="inpaint")
    assert result.status == "success", result.error
    # latent space: the latent's columns 0..4 lie left of the hole (pixel columns 40..63 are latent 5..7)
    before = engine._executor.outputs.get("3")[0]["samples"]
    after = engine._executor.outputs.get("7")[0]["samples"]
    assert torch.allclose(after[..., :5], before[..., :5], atol=1e-5)
    assert torch.allclose(after[..., 0:2, :], before[..., 0:2, :], atol=1e-5)  # rows above the hole (0..15 px)
    assert float((after[..., 2:6, 5:] - before[..., 2:6, 5:]).abs().mean()) > 0.1  # the hole was repainted
    # pixels: outside the hole the result is the VAE round trip, byte for byte; inside it is new
    final, round_trip = (np.asarray(result.images_by_node[k][0]).astype(int) for k in ("11", "12"))
    keep = np.ones((64, 64), bool)
    keep[16:48, 40:64] = False
    assert np.array_equal(final[keep], round_trip[keep])
    assert np.abs(final[~keep] - round_trip[~keep]).mean() > 10
    decoded = np.asarray(result.images_by_node["13"][0]).astype(int)
    assert np.array_equal(final[~keep], decoded[~keep])


def test_a_noise_mask_of_another_size_is_resized(engine, ckpt_name):
    """ComfyUI resizes a noise mask to the latent: a 16x16 mask on a 64x64 picture (8x8 latent) works."""
    image = _picture(engine.folders.input)
    graph = _graph(ckpt_name, image)
    graph["20"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 16, "height": 16}}
    graph["4"]["inputs"]["mask"] = ["20", 0]
    for k in ("10", "11", "12", "13"):
        del graph[k]
    graph["14"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    result = engine.execute(graph, prompt_id="resized")
    assert result.status == "success", result.error
    before = engine._executor.outputs.get("3")[0]["samples"]
    after = engine._executor.outputs.get("7")[0]["samples"]
    assert torch.allclose(after, before, atol=1e-5)  # an all-zero mask keeps everything


@pytest.mark.slow
def test_soft_masks_regions_and_differential_diffusion_on_the_demo_model(engine, ckpt_name):
    """A feathered mask, mask/percentage/averaged/concatenated conditionings and DifferentialDiffusion together."""
    image = _picture(engine.folders.input)
    graph = _graph(ckpt_name, image)
    for k in ("10", "11", "12", "13"):
        del graph[k]
    # the top-right quarter: its bounds (latent rows 0..3 -> ComfyUI's minimum of 8, columns 4..7) give an 8x4
    # crop the demo UNet can downsample (see test_odd_area_crops_run below)
    corner = _picture(engine.folders.input, hole=(0, 32, 32, 64), name="corner.png")
    graph.update({
        "29": {"class_type": "LoadImage", "inputs": {"image": corner}},
        "20": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
        "21": {"class_type": "FeatherMask", "inputs": {"mask": ["20", 0], "left": 64, "top": 0, "right": 0,
                                                       "bottom": 0}},  # 0 at the left edge ramping to 1
        "22": {"class_type": "ConditioningSetMask", "inputs": {"conditioning": ["5", 0], "mask": ["29", 1],
                                                               "strength": 1.0, "set_cond_area": "mask bounds"}},
        "23": {"class_type": "ConditioningSetAreaPercentage", "inputs": {"conditioning": ["6", 0], "width": 0.5,
                                                                         "height": 1.0, "x": 0.0, "y": 0.0,
                                                                         "strength": 0.5}},
        "24": {"class_type": "ConditioningAverage", "inputs": {"conditioning_to": ["5", 0],
                                                               "conditioning_from": ["6", 0],
                                                               "conditioning_to_strength": 0.7}},
        "25": {"class_type": "ConditioningConcat", "inputs": {"conditioning_to": ["24", 0],
                                                              "conditioning_from": ["6", 0]}},
        "26": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["22", 0], "conditioning_2": ["23", 0]}},
        "27": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["26", 0], "conditioning_2": ["25", 0]}},
        "28": {"class_type": "DifferentialDiffusion", "inputs": {"model": ["2", 0]}},
        "14": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    })
    graph["4"]["inputs"]["mask"] = ["21", 0]
    graph["7"]["inputs"].update(positive=["27", 0], steps=3)
    plain = engine.execute(graph, prompt_id="plain")
    assert plain.status == "success", plain.error
    without = engine._executor.outputs.get("7")[0]["samples"].clone()
    graph["7"]["inputs"]["model"] = ["28", 0]
    soft = engine.execute(graph, prompt_id="differential")
    assert soft.status == "success", soft.error
    before = engine._executor.outputs.get("3")[0]["samples"]
    with_dd = engine._executor.outputs.get("7")[0]["samples"]
    # DifferentialDiffusion repaints a pixel from the step where the remaining share of the run falls to its mask
    # value: the left columns (mask ~0.07) only in the last step (at sigma_min, where ComfyUI's threshold is 0),
    # the right ones (~0.93) from the second step on
    change = (with_dd - before).abs().mean(dim=(0, 1, 2))
    assert float(change[0]) < float(change[7]) / 10
    assert not torch.allclose(with_dd, without, atol=1e-3)


def test_odd_area_crops_run(engine, ckpt_name):
    """A crop that is not a multiple of the UNet's downsampling: each upsample follows its skip's size."""
    graph = _graph(ckpt_name, _picture(engine.folders.input))
    for k in ("10", "11", "12", "13"):
        del graph[k]
    graph["14"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    graph["20"] = {"class_type": "ConditioningSetMask", "inputs": {"conditioning": ["5", 0], "mask": ["1", 1],
                                                                   "strength": 1.0, "set_cond_area": "mask bounds"}}
    graph["7"]["inputs"]["positive"] = ["20", 0]  # the hole's bounds: a 6x3 latent crop
    result = engine.execute(graph, prompt_id="odd")
    assert result.status == "success", result.error
