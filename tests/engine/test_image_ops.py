"""Image edit and filter nodes on tiny tensors: sizes, colours, and ComfyUI's blur/sharpen kernels worked out by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from comfykit.nodes.image_edit import (  # noqa: E402
    EmptyImage,
    ImageBatch,
    ImageCrop,
    ImageInvert,
    ImageScaleBy,
    ImageScaleToTotalPixels,
)
from comfykit.nodes.image_filters import Canny, ImageBlur, ImageSharpen  # noqa: E402


def test_scale_by_and_to_total_pixels():
    image = torch.rand(2, 10, 30, 3)
    (out,) = ImageScaleBy().upscale(image, "bilinear", 1.55)
    assert out.shape == (2, round(10 * 1.55), round(30 * 1.55), 3)  # 16 x 46
    (mp,) = ImageScaleToTotalPixels().upscale(image, "nearest-exact", 0.01)
    # 0.01 MP = 10485.76 px at 1:3 -> scale sqrt(10485.76 / 300) = 5.912: 59 x 177
    scale = math.sqrt(0.01 * 1024 * 1024 / 300)
    assert mp.shape == (2, round(10 * scale), round(30 * scale), 3) == (2, 59, 177, 3)


def test_invert_inverts_every_channel_like_comfyui_0_3_64():
    image = torch.tensor([[[[0.25, 0.5, 1.0, 0.8]]]])
    assert ImageInvert().invert(image)[0].flatten().tolist() == pytest.approx([0.75, 0.5, 0.0, 0.2])


def test_batch_resizes_and_pads_alpha():
    a, b = torch.zeros(1, 4, 6, 3), torch.ones(2, 8, 12, 4)
    (out,) = ImageBatch().batch(a, b)
    assert out.shape == (3, 4, 6, 4)  # image2 resized to image1's size; image1 gets an opaque alpha
    assert out[0, ..., 3].unique().tolist() == [1.0] and out[1:, ..., :3].unique().tolist() == [1.0]


def test_crop_clamps_like_comfyui():
    image = torch.arange(5 * 6, dtype=torch.float32).reshape(1, 5, 6, 1).expand(-1, -1, -1, 3)
    (out,) = ImageCrop().crop(image, 2, 3, 1, 2)
    assert out.shape == (1, 3, 2, 3) and out[0, :, :, 0].tolist() == [[13, 14], [19, 20], [25, 26]]
    (edge,) = ImageCrop().crop(image, 4, 4, 100, 100)  # past the edge: the last pixel remains
    assert edge.shape == (1, 1, 1, 3) and edge[0, 0, 0, 0] == 29


def test_empty_image_colour():
    (out,) = EmptyImage().generate(3, 2, 2, 0xFF8000)
    assert out.shape == (2, 2, 3, 3)
    assert out[1, 1, 2].tolist() == pytest.approx([1.0, 128 / 255, 0.0])


def _dot(size=5):
    image = torch.zeros(1, size, size, 3)
    image[0, size // 2, size // 2] = 1.0
    return image


def test_blur_uses_comfyuis_relative_gaussian():
    # radius 1: the kernel grid is [-1, 0, 1]^2, weights exp(-d^2 / 2 sigma^2) = 1, e^-1/2 (sides), e^-1 (corners)
    (out,) = ImageBlur().blur(_dot(), 1, 1.0)
    total = 1 + 4 * math.exp(-0.5) + 4 * math.exp(-1)
    centre = out[0, 1:4, 1:4, 0]
    expected = torch.tensor([[math.exp(-1), math.exp(-0.5), math.exp(-1)],
                             [math.exp(-0.5), 1.0, math.exp(-0.5)],
                             [math.exp(-1), math.exp(-0.5), math.exp(-1)]]) / total
    assert torch.allclose(centre, expected, atol=1e-6)
    assert float(out[0, 0].abs().max()) == 0.0 and torch.equal(out[..., 0], out[..., 2])
    flat = torch.full((1, 4, 4, 3), 0.3)
    assert torch.allclose(ImageBlur().blur(flat, 2, 0.5)[0], flat, atol=1e-6)  # reflected borders keep a flat image


def test_blur_border_is_reflected():
    image = torch.zeros(1, 4, 4, 3)
    image[0, 0, 1] = 1.0  # next to the corner: reflection (x[-1] = x[1]) mirrors it onto column -1
    (out,) = ImageBlur().blur(image, 1, 1.0)
    total = 1 + 4 * math.exp(-0.5) + 4 * math.exp(-1)
    assert float(out[0, 0, 1, 0]) == pytest.approx(1 / total, abs=1e-6)  # row -1 mirrors row 1, which is dark
    assert float(out[0, 0, 0, 0]) == pytest.approx(2 * math.exp(-0.5) / total, abs=1e-6)  # itself + its mirror
    with pytest.raises(ValueError, match="ImageBlur: a radius of 4 needs an image larger than 4 pixels"):
        ImageBlur().blur(image, 4, 1.0)


def test_sharpen_kernel_sums_to_one():
    flat = torch.full((1, 5, 5, 3), 0.4)
    assert torch.allclose(ImageSharpen().sharpen(flat, 1, 1.0, 1.0)[0], flat, atol=1e-6)
    # a dot: neighbours get -10 alpha x their gaussian weight, the centre 1 + 10 alpha x (1 - its weight), clamped
    (out,) = ImageSharpen().sharpen(_dot() * 0.01, 1, 1.0, 0.5)
    total = 1 + 4 * math.exp(-0.5) + 4 * math.exp(-1)
    centre = 0.01 * (1 + 5 * (1 - 1 / total))
    assert float(out[0, 2, 2, 0]) == pytest.approx(centre, abs=1e-6)
    assert float(out[0, 2, 1, 0]) == 0.0  # negative, clamped


def test_canny_finds_a_squares_outline():
    image = torch.zeros(1, 32, 32, 3)
    image[:, 8:24, 8:24] = 1.0
    (edges,) = Canny().detect_edge(image, 0.1, 0.3)
    assert edges.shape == (1, 32, 32, 3) and set(edges.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(edges[..., 0], edges[..., 2])
    lit = edges[0, :, :, 0]
    assert float(lit[16, 4:12].max()) == 1.0 and float(lit[12:20, 12:20].max()) == 0.0  # the border, not inside
    assert float(lit[:4].max()) == 0.0
    (rgba,) = Canny().detect_edge(torch.cat([image, torch.ones(1, 32, 32, 1)], -1), 0.1, 0.3)
    assert torch.equal(rgba, edges)
    with pytest.raises(ValueError, match="Canny: low_threshold 0.5 is above high_threshold 0.2"):
        Canny().detect_edge(image, 0.5, 0.2)


def test_kornia_is_imported_only_when_a_filter_runs():
    code = ("import sys, comfykit.nodes, comfykit.graph.builtin as b; b.object_info(); "
            "assert 'kornia' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
