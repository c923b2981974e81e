"""Matplotlib figures of generated images: a plain grid for batches and galleries, a labelled X/Y grid for sweeps.

>>> fig = ck.plot.grid(result.images, titles=["a", "b"])          # doctest: +SKIP

matplotlib is imported on first use; figures are closed in pyplot right away so a notebook shows the returned
figure once, not twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _to_pil(image: Any) -> Any:
    """PIL image from a PIL image, a HxWx3 / HxW array (uint8 or 0..1 floats) or a torch tensor."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    import numpy as np

    if hasattr(image, "detach"):  # torch tensor, without importing torch here
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"cannot plot an array of shape {arr.shape}: expected HxW, HxWxC or 1xHxWxC")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def _flatten(images: Any) -> list[Any]:
    """Accept a list of images, a Result, a Gallery (anything with ``.images``) or a batch array."""
    if hasattr(images, "images") and not isinstance(images, (list, tuple)):
        images = images.images
    if hasattr(images, "shape") and len(images.shape) == 4:  # [B,H,W,C] batch
        return [images[i] for i in range(images.shape[0])]
    if not isinstance(images, (list, tuple)):
        images = [images]
    return list(images)


def _pyplot() -> Any:
    import matplotlib.pyplot as plt

    return plt


def _show(ax: Any, image: Any) -> None:
    ax.imshow(_to_pil(image))
    # ticks and spines off but the axes kept on, so set_ylabel still draws row labels
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def grid(images: Any, titles: Sequence[str] | None = None, ncols: int | None = None,
         figsize: tuple[float, float] | None = None) -> Any:
    """One figure with every image in a grid (one axes per image), optionally titled.

    >>> fig = grid(result.images, ncols=2)                         # doctest: +SKIP
    """
    images = _flatten(images)
    if not images:
        raise ValueError("grid() needs at least one image; got an empty list")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"grid() got {len(images)} images but {len(titles)} titles; pass one title per image")
    n = len(images)
    ncols = ncols or math.ceil(math.sqrt(n))
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    first = _to_pil(images[0])
    aspect = first.height / max(first.width, 1)
    plt = _pyplot()
    fig = plt.figure(figsize=figsize or (3 * ncols, 3 * nrows * aspect + (0.4 * nrows if titles else 0)))
    for i, image in enumerate(images):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _show(ax, image)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig


def xy_grid(images: dict[tuple[Any, Any], Any], xs: Sequence[Any], ys: Sequence[Any] | None = None, *,
            xlabel: str = "x", ylabel: str = "y", title: str | None = None,
            figsize: tuple[float, float] | None = None) -> Any:
    """A labelled X/Y grid: column titles ``xlabel=value``, row labels ``ylabel=value``; images keyed ``(x, y)``.

    With ``ys=None`` there is one row and ``images`` is keyed ``(x,)``.
    """
    rows = [None] if ys is None else list(ys)
    xs = list(xs)
    if not xs:
        raise ValueError("xy_grid() needs at least one x value")
    plt = _pyplot()
    first = _to_pil(next(iter(images.values())))
    aspect = first.height / max(first.width, 1)
    size = figsize or (2.6 * len(xs) + (0.6 if ys is not None else 0),
                       2.6 * len(rows) * aspect + 0.5 + (0.4 if title else 0))
    fig = plt.figure(figsize=size)
    for r, y in enumerate(rows):
        for c, x in enumerate(xs):
            key = (x,) if ys is None else (x, y)
            ax = fig.add_subplot(len(rows), len(xs), r * len(xs) + c + 1)
            _show(ax, images[key])
            if r == 0:
                ax.set_title(f"{xlabel}={x}", fontsize=10)
            if c == 0 and ys is not None:
                ax.set_ylabel(f"{ylabel}={y}", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig
