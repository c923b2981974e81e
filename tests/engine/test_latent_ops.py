"""Latent edit nodes on tiny latents: where pixels land, what happens to noise masks and batch indices."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from comfykit.nodes.latent_ops import (  # noqa: E402
    LatentBlend,
    LatentComposite,
    LatentCompositeMasked,
    LatentCrop,
    LatentFlip,
    LatentFromBatch,
    LatentRotate,
    RepeatLatentBatch,
    SetLatentNoiseMask,
)


def lat(b=1, c=4, h=4, w=4, fill=0.0, **extra):
    return {"samples": torch.full((b, c, h, w), float(fill)), **extra}


def test_composite_pastes_at_pixel_offsets_divided_by_8():
    to, src = lat(h=4, w=6, noise_mask=torch.ones(1, 1, 4, 6)), lat(h=2, w=4, fill=1.0)
    (out,) = LatentComposite().composite(to, src, 24, 8, 0)
    region = out["samples"][0, 0]
    assert region.nonzero().tolist() == [[1, 3], [1, 4], [1, 5], [2, 3], [2, 4], [2, 5]]  # cut at the right edge
    assert "noise_mask" in out and float(to["samples"].abs().max()) == 0.0  # other keys kept; input unchanged


def test_composite_feathers_inner_edges_only():
    to, src = lat(h=6, w=6), lat(h=4, w=4, fill=1.0)
    (out,) = LatentComposite().composite(to, src, 16, 0, 16)  # feather 2 latent px; top edge lies on the border
    s = out["samples"][0, 0]
    # columns from x = 2: left edge 1/2, 2/2, ...; the source reaches the right border (no ramp there);
    # rows 0..3: the top is the image border (no ramp), the bottom edge inside ramps 2/2, 1/2
    assert s[0, 2:].tolist() == pytest.approx([0.5, 1.0, 1.0, 1.0])
    assert s[3, 2:].tolist() == pytest.approx([0.25, 0.5, 0.5, 0.5])
    assert float(s[4:].abs().max()) == 0.0 and float(s[:, :2].abs().max()) == 0.0


def test_composite_refuses_what_comfyui_cannot_paste():
    with pytest.raises(ValueError, match=r"LatentComposite: samples_from has shape \[1, 16, 2, 2\] but needs to "
                                         r"match \[1, 4, 4, 4\]"):
        LatentComposite().composite(lat(), lat(c=16, h=2, w=2), 0, 0, 0)
    (ok,) = LatentComposite().composite(lat(b=3), lat(b=1, h=2, w=2, fill=1.0), 0, 0, 0)  # one item for a batch
    assert float(ok["samples"][:, :, :2, :2].min()) == 1.0
    with pytest.raises(ValueError, match="LatentComposite: samples_from has shape"):
        LatentComposite().composite(lat(b=3), lat(b=2), 0, 0, 0)


def test_composite_masked_blends_through_a_resized_mask():
    dest, src = lat(b=2, h=4, w=4), lat(b=1, h=2, w=2, fill=1.0)
    mask = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    (out,) = LatentCompositeMasked().composite(dest, src, 8, 16, False, mask)
    assert out["samples"].shape == (2, 4, 4, 4)
    assert out["samples"][1, 3, 2:4, 1:3].tolist() == [[1.0, 0.0], [0.5, 1.0]]
    (resized,) = LatentCompositeMasked().composite(dest, src, 0, 0, True)
    assert float(resized["samples"].min()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="LatentCompositeMasked: source has shape"):
        LatentCompositeMasked().composite(dest, lat(c=16), 0, 0, False)


def test_blend_and_its_resize():
    (out,) = LatentBlend().blend(lat(fill=1.0), lat(fill=3.0), 0.25)
    assert out["samples"].unique().tolist() == [pytest.approx(0.25 * 1 + 0.75 * 3)]
    (resized,) = LatentBlend().blend(lat(fill=1.0), lat(h=8, w=8, fill=3.0), 0.5)
    assert resized["samples"].shape == (1, 4, 4, 4) and torch.allclose(resized["samples"], torch.tensor(2.0))
    with pytest.raises(ValueError, match="LatentBlend: samples2 has shape"):
        LatentBlend().blend(lat(b=2), lat(b=3), 0.5)


def test_repeat_latent_batch_carries_masks_and_indices():
    samples = lat(b=2, noise_mask=torch.rand(2, 1, 4, 4), batch_index=[3, 4])
    (out,) = RepeatLatentBatch().repeat(samples, 3)
    assert out["samples"].shape[0] == 6 and out["noise_mask"].shape[0] == 6
    assert torch.equal(out["noise_mask"][4], samples["noise_mask"][0])
    assert out["batch_index"] == [3, 4, 5, 6, 7, 8]
    single = lat(noise_mask=torch.ones(1, 1, 4, 4))
    assert RepeatLatentBatch().repeat(single, 4)[0]["noise_mask"].shape[0] == 1  # one mask serves all


def test_latent_from_batch_keeps_each_items_noise_index():
    samples = lat(b=4)
    samples["samples"][:, 0, 0, 0] = torch.arange(4.0)
    samples["noise_mask"] = torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 1, 4, 4)
    (out,) = LatentFromBatch().frombatch(samples, 2, 5)
    assert out["samples"][:, 0, 0, 0].tolist() == [2.0, 3.0] and out["batch_index"] == [2, 3]
    assert out["noise_mask"][:, 0, 0, 0].tolist() == [0.0, 1.0]  # masks repeated to the batch, then sliced
    (last,) = LatentFromBatch().frombatch({**samples, "batch_index": [10, 11, 12, 13]}, 63, 1)
    assert last["batch_index"] == [13] and last["samples"].shape[0] == 1


def test_crop_flip_rotate():
    samples = lat(h=10, w=12)
    samples["samples"][0, 0] = torch.arange(120.0).reshape(10, 12)
    (crop,) = LatentCrop().crop(samples, 64, 64, 80, 16)
    assert crop["samples"].shape == (1, 4, 8, 8)
    assert crop["samples"][0, 0, 0, 0] == 2 * 12 + 4  # x clamped to width - 8 = 4, y = 16 // 8 = 2
    grid = {"samples": torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])}
    assert LatentFlip().flip(grid, "x-axis: vertically")[0]["samples"][0, 0].tolist() == [[3, 4], [1, 2]]
    assert LatentFlip().flip(grid, "y-axis: horizontally")[0]["samples"][0, 0].tolist() == [[2, 1], [4, 3]]
    assert LatentRotate().rotate(grid, "90 degrees")[0]["samples"][0, 0].tolist() == [[3, 1], [4, 2]]  # clockwise
    assert LatentRotate().rotate(grid, "270 degrees")[0]["samples"][0, 0].tolist() == [[2, 4], [1, 3]]
    assert torch.equal(LatentRotate().rotate(grid, "none")[0]["samples"], grid["samples"])


def test_set_latent_noise_mask_shapes_the_mask():
    (out,) = SetLatentNoiseMask().set_mask(lat(), torch.ones(16, 16))
    assert out["noise_mask"].shape == (1, 1, 16, 16) and out["samples"].shape == (1, 4, 4, 4)
    (batch,) = SetLatentNoiseMask().set_mask(lat(), torch.ones(3, 8, 8))
    assert batch["noise_mask"].shape == (3, 1, 8, 8)
