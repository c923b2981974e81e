"""Image filters: ImageBlur, ImageSharpen (ComfyUI's post-processing nodes) and the Canny edge preprocessor.

The filtering is kornia's (Apache-2.0), imported when a node runs: it is the library ComfyUI itself uses for
Canny, so ``kornia.filters.canny`` gives ComfyUI's edges (the same Sobel, non-maximum suppression and hysteresis,
not a look-alike), and it is a maintained, torch-only package (no torchvision, no OpenCV) that runs on any device
the image is on. Blur and sharpen convolve with ComfyUI's own kernel, a radial Gaussian over ``[-1, 1]`` (so
``sigma`` is relative to the radius, not in pixels), through ``kornia.filters.filter2d`` with reflected borders;
that equals ComfyUI's reflect-pad-then-convolve exactly.
"""

from __future__ import annotations

from typing import Any

from .base import FLOAT, INT, LINK, Node

_POST = "comfy_extras.nodes_post_processing"


def gaussian_kernel(size: int, sigma: float, dtype: Any = None, device: Any = None) -> Any:
    """ComfyUI's blur kernel: exp(-d^2 / 2 sigma^2) over a size x size grid spanning [-1, 1], summing to 1."""
    import torch

    axis = torch.linspace(-1, 1, size, device=device)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    g = torch.exp(-(xx * xx + yy * yy) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype or torch.float32)


def _filter(node: str, image: Any, kernel: Any, radius: int) -> Any:
    """``image`` [B, H, W, C] convolved with ``kernel`` (borders reflected)."""
    import kornia

    if radius >= min(image.shape[1], image.shape[2]):
        raise ValueError(f"{node}: a radius of {radius} needs an image larger than {radius} pixels on each side, "
                         f"got {image.shape[2]}x{image.shape[1]}; use a smaller radius")
    out = kornia.filters.filter2d(image.movedim(-1, 1), kernel[None], border_type="reflect")
    return out.movedim(1, -1)


class ImageBlur(Node):
    """Blurs images with a Gaussian of the given radius (sigma is relative: 1 spreads over the whole radius)."""

    DISPLAY, CATEGORY, PYTHON_MODULE = None, "image/postprocessing", _POST
    INPUTS = {"image": LINK("IMAGE"), "blur_radius": INT(1, 1, 31, 1), "sigma": FLOAT(1.0, 0.1, 10.0, 0.1)}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "blur"

    def blur(self, image: Any, blur_radius: int, sigma: float) -> tuple[Any]:
        if blur_radius == 0:
            return (image,)
        kernel = gaussian_kernel(blur_radius * 2 + 1, sigma, image.dtype, image.device)
        return (_filter("ImageBlur", image, kernel, blur_radius),)


class ImageSharpen(Node):
    """Sharpens images (unsharp mask: the image minus alpha x 10 times its Gaussian blur, renormalised), clamped."""

    DISPLAY, CATEGORY, PYTHON_MODULE = None, "image/postprocessing", _POST
    INPUTS = {"image": LINK("IMAGE"), "sharpen_radius": INT(1, 1, 31, 1), "sigma": FLOAT(1.0, 0.1, 10.0, 0.01),
              "alpha": FLOAT(1.0, 0.0, 5.0, 0.01)}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "sharpen"

    def sharpen(self, image: Any, sharpen_radius: int, sigma: float, alpha: float) -> tuple[Any]:
        if sharpen_radius == 0:
            return (image,)
        size = sharpen_radius * 2 + 1
        kernel = gaussian_kernel(size, sigma, image.dtype, image.device) * -(alpha * 10)
        centre = size // 2
        kernel[centre, centre] = kernel[centre, centre] - kernel.sum() + 1.0  # the kernel sums to 1
        return (_filter("ImageSharpen", image, kernel, sharpen_radius).clamp(0, 1),)


class Canny(Node):
    """Canny edges (kornia, as ComfyUI): white edges on black, the hint image of canny ControlNets."""

    DISPLAY, CATEGORY, PYTHON_MODULE = None, "image/preprocessors", "comfy_extras.nodes_canny"
    INPUTS = {"image": LINK("IMAGE"), "low_threshold": FLOAT(0.4, 0.01, 0.99, 0.01),
              "high_threshold": FLOAT(0.8, 0.01, 0.99, 0.01)}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "detect_edge"

    def detect_edge(self, image: Any, low_threshold: float, high_threshold: float) -> tuple[Any]:
        import kornia

        if low_threshold > high_threshold:
            raise ValueError(f"Canny: low_threshold {low_threshold} is above high_threshold {high_threshold}; "
                             "make low_threshold the smaller one")
        # kornia converts RGB to grey itself; an alpha channel is dropped (it is not part of the picture)
        _, edges = kornia.filters.canny(image[..., :3].movedim(-1, 1), low_threshold, high_threshold)
        return (edges.repeat(1, 3, 1, 1).movedim(1, -1),)
