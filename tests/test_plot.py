"""ck.plot: image grids for batches, galleries and sweeps."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image

import comfykit as ck

matplotlib.use("Agg")


def _images(n, size=(12, 8)):
    return [Image.new("RGB", size, (20 * i, 100, 200)) for i in range(n)]


def _geometry(ax):
    spec = ax.get_subplotspec()
    nrows, ncols, _, _ = spec.get_geometry()
    return nrows, ncols, spec.rowspan.start, spec.colspan.start


def test_grid_lays_out_one_titled_axes_per_image():
    fig = ck.plot.grid(_images(5), titles=[f"seed {i}" for i in range(5)], ncols=3)
    assert len(fig.axes) == 5
    assert [ax.get_title() for ax in fig.axes] == [f"seed {i}" for i in range(5)]
    assert [_geometry(ax) for ax in fig.axes] == [(2, 3, 0, 0), (2, 3, 0, 1), (2, 3, 0, 2), (2, 3, 1, 0),
                                                  (2, 3, 1, 1)]
    # the pixels shown are the image's
    shown = fig.axes[1].get_images()[0].get_array()
    assert tuple(shown[0, 0][:3]) == (20, 100, 200)


def test_grid_defaults_to_a_square_layout_and_accepts_arrays_and_results():
    batch = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)  # a [B,H,W,C] 0..1 batch
    fig = ck.plot.grid(batch)
    assert len(fig.axes) == 4 and _geometry(fig.axes[3]) == (2, 2, 1, 1)
    result = ck.Result("p", images_by_node={"9": _images(3)})
    assert len(ck.plot.grid(result).axes) == 3


def test_grid_rejects_bad_input_with_a_clear_message():
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        ck.plot.grid(_images(2), titles=["only one"])
    with pytest.raises(ValueError, match="at least one image"):
        ck.plot.grid([])
    with pytest.raises(ValueError, match="shape"):
        ck.plot.grid([np.zeros((2, 2, 2, 2, 2))])


def test_xy_grid_labels_columns_and_rows():
    xs, ys = [4, 7, 10], [10, 20]
    images = {(x, y): im for (x, y), im in zip([(x, y) for y in ys for x in xs], _images(6))}
    fig = ck.plot.xy_grid(images, xs, ys, xlabel="cfg", ylabel="steps", title="sampler=euler")
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:3]] == ["cfg=4", "cfg=7", "cfg=10"]
    assert all(ax.get_title() == "" for ax in fig.axes[3:])
    assert [fig.axes[i].get_ylabel() for i in (0, 3)] == ["steps=10", "steps=20"]
    assert fig.axes[1].get_ylabel() == ""
    assert fig._suptitle.get_text() == "sampler=euler"
