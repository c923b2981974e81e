"""Mask nodes and the image loaders' masks on tiny tensors, against values worked out by hand or ComfyUI's formulas."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from comfykit.engine import Engine  # noqa: E402
from comfykit.nodes.image import LoadImage  # noqa: E402
from comfykit.nodes.image_load import LoadImageMask, LoadImageOutput  # noqa: E402
from comfykit.nodes.mask import (  # noqa: E402
    CropMask,
    FeatherMask,
    GrowMask,
    ImageColorToMask,
    ImageCompositeMasked,
    ImageToMask,
    InvertMask,
    MaskComposite,
    MaskPreview,
    MaskToImage,
    SolidMask,
    ThresholdMask,
)


@pytest.fixture
def engine(tmp_path):
    (tmp_path / "input").mkdir()
    (tmp_path / "output").mkdir()
    eng = Engine(tmp_path / "models", output_dir=tmp_path / "output", input_dir=tmp_path / "input",
                 temp_dir=tmp_path / "temp", device="cpu", previews="none")
    yield eng
    eng.shutdown()


def rgba_file(folder, name="a.png"):
    """A 4x2 RGBA picture: red ramps 0..255 left to right, alpha 255 on the left half and 0 on the right."""
    arr = np.zeros((2, 4, 4), dtype=np.uint8)
    arr[..., 0] = [0, 85, 170, 255]
    arr[..., 3] = [255, 255, 0, 0]
    Image.fromarray(arr, "RGBA").save(folder / name)
    return name


def test_load_image_mask_is_one_minus_alpha(engine):
    name = rgba_file(engine.folders.input)
    image, mask = LoadImage(engine).load_image(name)
    assert image.shape == (1, 2, 4, 3) and mask.shape == (1, 2, 4)
    # opaque pixels are kept (0), transparent ones are to be repainted (1): ComfyUI's inversion
    assert mask[0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert image[0, 0, :, 0].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-6)
    Image.new("RGB", (4, 2)).save(engine.folders.input / "rgb.png")
    _, no_alpha = LoadImage(engine).load_image("rgb.png")
    assert no_alpha.shape == (1, 64, 64) and float(no_alpha.abs().max()) == 0.0  # ComfyUI's placeholder


def test_load_image_mask_channels(engine):
    name = rgba_file(engine.folders.input)
    node = LoadImageMask(engine)
    (alpha,) = node.load_image_mask(name, "alpha")
    (red,) = node.load_image_mask(name, "red")
    assert alpha.shape == (1, 2, 4) and alpha[0, 1].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert red[0, 0].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-6)  # colour channels are not inverted
    Image.new("RGB", (5, 3), (10, 20, 30)).save(engine.folders.input / "rgb.png")
    (opaque,) = node.load_image_mask("rgb.png", "alpha")
    assert opaque.shape == (1, 3, 5) and float(opaque.abs().max()) == 0.0  # read as RGBA: fully opaque
    with pytest.raises(FileNotFoundError, match="LoadImageMask: 'nope.png' is not in the input folder"):
        node.load_image_mask("nope.png", "red")


def test_load_image_output_reads_the_output_folder(engine):
    name = rgba_file(engine.folders.output, "ComfyUI_00001_.png")
    node = LoadImageOutput(engine)
    image, mask = node.load_image(name + " [output]")
    again, _ = node.load_image(name)  # a bare name is an output file too
    assert image.shape == (1, 2, 4, 3) and torch.equal(image, again) and mask[0, 0, 3] == 1.0
    with pytest.raises(FileNotFoundError, match="not in the output folder"):
        node.load_image("missing.png [output]")


def test_load_image_mask_runs_in_a_workflow(engine):
    name = rgba_file(engine.folders.input)
    prompt = {"1": {"class_type": "LoadImageMask", "inputs": {"image": name, "channel": "alpha"}},
              "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0]}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    result = engine.execute(prompt, prompt_id="m")
    assert result.status == "success", result.error
    assert np.asarray(result.image)[1].tolist() == [[0, 0, 0], [0, 0, 0], [255] * 3, [255] * 3]


def test_image_to_mask_and_back():
    image = torch.rand(2, 3, 5, 3)
    (green,) = ImageToMask().image_to_mask(image, "green")
    assert torch.equal(green, image[..., 1])
    (grey,) = MaskToImage().mask_to_image(green)
    assert grey.shape == (2, 3, 5, 3) and all(torch.equal(grey[..., c], green) for c in range(3))
    (one,) = MaskToImage().mask_to_image(torch.ones(3, 5))  # a 2-D mask is one item
    assert one.shape == (1, 3, 5, 3)
    with pytest.raises(ValueError, match="ImageToMask: the image has 3 channels, so it has no alpha channel"):
        ImageToMask().image_to_mask(image, "alpha")
    (alpha,) = ImageToMask().image_to_mask(torch.rand(1, 2, 2, 4), "alpha")
    assert alpha.shape == (1, 2, 2)


def test_solid_invert_threshold():
    (solid,) = SolidMask().solid(0.25, 3, 2)
    assert solid.shape == (1, 2, 3) and solid.unique().tolist() == [0.25]
    (inverted,) = InvertMask().invert(solid)
    assert inverted.unique().tolist() == [0.75]
    (binary,) = ThresholdMask().image_to_mask(torch.tensor([[0.2, 0.5, 0.51, 0.9]]), 0.5)
    assert binary.tolist() == [[0.0, 0.0, 1.0, 1.0]]  # strictly above the value


def test_grow_mask_tapered_grows_a_diamond():
    mask = torch.zeros(1, 7, 7)
    mask[0, 3, 3] = 1.0
    (diamond,) = GrowMask().expand_mask(mask, 2, True)
    (square,) = GrowMask().expand_mask(mask, 2, False)
    assert int(diamond.sum()) == 13 and int(square.sum()) == 25  # |dx| + |dy| <= 2 vs a 5x5 block
    assert diamond[0, 1, 1] == 0.0 and diamond[0, 1, 3] == 1.0 and square[0, 1, 1] == 1.0
    assert torch.equal(GrowMask().expand_mask(mask, 0, True)[0], mask)


def test_grow_mask_shrinks_holes_but_not_from_the_border():
    mask = torch.ones(2, 5, 6)
    mask[1, 0, 0] = 0.0  # a hole in the corner of the second item
    (out,) = GrowMask().expand_mask(mask, -1, True)
    assert torch.equal(out[0], torch.ones(5, 6))  # the image edge counts as more of the mask (scipy's reflect)
    assert out[1].flatten().nonzero().numel() == 30 - 3  # the hole grows to its two neighbours
    assert out[1, 0, :2].tolist() == [0.0, 0.0] and out[1, 1, 0] == 0.0 and out[1, 1, 1] == 1.0
    soft = torch.tensor([[[0.2, 0.9, 0.4]]])
    assert GrowMask().expand_mask(soft, 1, True)[0][0, 0].tolist() == pytest.approx([0.9, 0.9, 0.9])  # grey max
    assert GrowMask().expand_mask(soft, -1, True)[0][0, 0].tolist() == pytest.approx([0.2, 0.2, 0.4])


def test_feather_mask_ramps_like_comfyui_0_3_64():
    (left_top,) = FeatherMask().feather(torch.ones(1, 4, 6), 2, 1, 0, 0)
    # left ramp 1/2, 2/2 over the columns; a top ramp of 1 pixel is 1/1
    assert torch.allclose(left_top[0], torch.tensor([0.5, 1.0, 1.0, 1.0, 1.0, 1.0]).expand(4, 6))
    (right_bottom,) = FeatherMask().feather(torch.ones(1, 4, 6), 0, 0, 3, 2)
    # 0.3.64 walks the right ramp as columns -0, -1, -2 = 0, 5, 4 with 1/3, 2/3, 3/3 (the left column is hit, the
    # last column gets 2/3); the bottom ramp as rows 0, 3 with 1/2, 2/2
    cols = torch.tensor([1 / 3, 1.0, 1.0, 1.0, 1.0, 2 / 3])
    rows = torch.tensor([1 / 2, 1.0, 1.0, 1.0])
    assert torch.allclose(right_bottom[0], rows[:, None] * cols[None, :])
    (clamped,) = FeatherMask().feather(torch.ones(4, 2), 9, 0, 0, 0)  # wider than the mask: a ramp over it
    assert clamped[0, 0].tolist() == [0.5, 1.0]


def test_image_composite_masked_pastes_through_the_mask():
    dest = torch.zeros(1, 6, 8, 3)
    source = torch.ones(1, 2, 3, 3)
    (plain,) = ImageCompositeMasked().composite(dest, source, 4, 1, False)
    assert plain[0, :, :, 0].nonzero().tolist() == [[1, 4], [1, 5], [1, 6], [2, 4], [2, 5], [2, 6]]
    assert float(dest.abs().max()) == 0.0  # the input is not changed
    mask = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.25]]])
    (masked,) = ImageCompositeMasked().composite(dest, source, 4, 1, False, mask)
    assert masked[0, 1:3, 4:7, 2].tolist() == mask[0].tolist()
    (edge,) = ImageCompositeMasked().composite(dest, source, 7, 5, False)  # only the visible corner is pasted
    assert edge[0, :, :, 0].nonzero().tolist() == [[5, 7]]
    (whole,) = ImageCompositeMasked().composite(dest, source, 0, 0, True)  # resized to the destination's size
    assert float(whole.min()) == pytest.approx(1.0)
    (shifted,) = ImageCompositeMasked().composite(dest, source, 3, 2, True)  # ... and still placed at (x, y)
    assert float(shifted[0, :, :, 0].sum()) == pytest.approx((6 - 2) * (8 - 3))


def test_image_composite_masked_fits_sizes_like_comfyui():
    dest = torch.zeros(2, 4, 4, 3)
    source = torch.ones(1, 4, 4, 4)  # RGBA onto RGB: the alpha is dropped; one source for a batch of two
    big_mask = torch.zeros(1, 8, 8)
    big_mask[:, :, :4] = 1.0  # a mask of another size is resized to the source (left half)
    (out,) = ImageCompositeMasked().composite(dest, source, 0, 0, False, big_mask)
    assert out.shape == (2, 4, 4, 3)
    assert torch.equal(out[1, :, :2], torch.ones(4, 2, 3)) and torch.equal(out[1, :, 2:], torch.zeros(4, 2, 3))
    (rgba,) = ImageCompositeMasked().composite(torch.zeros(1, 4, 4, 4), torch.full((1, 2, 2, 3), 0.5), 0, 0, False)
    assert rgba[0, 0, 0].tolist() == [0.5, 0.5, 0.5, 1.0]  # an RGB source onto RGBA gets an opaque alpha


def test_image_color_to_mask_matches_8bit_colours():
    image = torch.tensor([[[[1.0, 128 / 255, 0.0], [1.0, 127 / 255, 0.0], [0.0, 0.0, 0.0]]]])
    (mask,) = ImageColorToMask().image_to_mask(image, 0xFF8000)
    assert mask.tolist() == [[[1.0, 0.0, 0.0]]]


def test_crop_and_composite_masks():
    dest = torch.full((1, 3, 4), 0.5)
    (crop,) = CropMask().crop(dest, 1, 2, 10, 10)
    assert crop.shape == (1, 1, 3)
    source = torch.tensor([[[1.0, 0.2], [0.6, 0.0]]])
    # the logical ones work on rounded masks: the destination's 0.5 rounds to 0 (half to even), the source to 1 0 1 0
    expected = {"multiply": [0.5, 0.1, 0.3, 0.0], "add": [1.0, 0.7, 1.0, 0.5], "subtract": [0.0, 0.3, 0.0, 0.5],
                "and": [0.0, 0.0, 0.0, 0.0], "or": [1.0, 0.0, 1.0, 0.0], "xor": [1.0, 0.0, 1.0, 0.0]}
    for op, want in expected.items():
        (out,) = MaskComposite().combine(dest, source, 2, 1, op)
        assert out[0, 1:3, 2:4].flatten().tolist() == pytest.approx(want), op
        assert out[0, 0].tolist() == [0.5] * 4  # outside the pasted rectangle nothing changes
    (edge,) = MaskComposite().combine(dest, source, 3, 2, "add")  # only the visible corner is combined
    assert edge[0, 2, 3] == 1.0 and edge[0, 1, 3] == 0.5
    (off,) = MaskComposite().combine(dest, source, 9, 9, "add")
    assert torch.equal(off, dest)
    with pytest.raises(ValueError, match="MaskComposite: source has shape \\[2, 2, 2\\]"):
        MaskComposite().combine(torch.zeros(3, 4, 4), torch.zeros(2, 2, 2), 0, 0, "add")


def test_mask_preview_writes_a_grey_temp_png(engine):
    node = MaskPreview(engine)
    out = node.execute(torch.tensor([[[0.0, 1.0]]]))
    ref = out["ui"]["images"][0]
    assert ref["type"] == "temp" and ref["filename"].startswith("ComfyUI_temp_")
    with Image.open(engine.folders.temp / ref["filename"]) as im:
        assert np.asarray(im.convert("RGB")).tolist() == [[[0, 0, 0], [255, 255, 255]]]
