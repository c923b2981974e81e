"""Conversions between ComfyUI IMAGE/MASK tensors (``[B,H,W,C]`` float 0..1) and PIL images."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """One PIL image per batch item, truncating ``255*x`` like ComfyUI's SaveImage (diffusers rounds)."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(f"expected an IMAGE tensor [B,H,W,C], got shape {tuple(images.shape)}")
    out = []
    for image in images:
        arr = np.clip(255.0 * image.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        out.append(Image.fromarray(arr))
    return out


def pil_to_tensor(image: Image.Image | list[Image.Image]) -> torch.Tensor:
    """A ``[B,H,W,3]`` float32 tensor in 0..1 from one PIL image or a list of same-size images."""
    images = image if isinstance(image, list) else [image]
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays))


def load_image_file(path: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """LoadImage semantics: (IMAGE ``[B,H,W,3]``, MASK ``[B,H,W]`` = 1 - alpha, or zeros 64x64 without alpha).

    EXIF orientation is applied, 16-bit "I" images are scaled by 1/255 as ComfyUI does, and the frames of a
    multi-frame file are batched (frames of another size are skipped; MPO files use their first frame only).
    """
    img = Image.open(path)
    images, masks, size = [], [], None
    frames = [img] if img.format == "MPO" else ImageSequence.Iterator(img)
    for frame in frames:
        frame = ImageOps.exif_transpose(frame)
        if frame.mode == "I":
            frame = frame.point(lambda px: px * (1 / 255))
        rgb = frame.convert("RGB")
        if size is None:
            size = rgb.size
        elif rgb.size != size:
            continue
        images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0))
        if "A" in frame.getbands():
            alpha = np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0
            masks.append(1.0 - torch.from_numpy(alpha))
        elif frame.mode == "P" and "transparency" in frame.info:
            alpha = np.asarray(frame.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
            masks.append(1.0 - torch.from_numpy(alpha))
        else:
            masks.append(torch.zeros((64, 64), dtype=torch.float32))
    if not images:
        raise ValueError(f"{path}: no image frames could be read")
    if len(images) == 1:
        return images[0].unsqueeze(0), masks[0].unsqueeze(0)
    # masks of different shapes (alpha vs the 64x64 placeholder) cannot stack; ComfyUI has the same limit
    return torch.stack(images), torch.stack(masks)


def load_mask_file(path: Any, channel: str) -> torch.Tensor:
    """LoadImageMask semantics: one channel of the first frame as a ``[1,H,W]`` mask (alpha as 1 - alpha).

    The image is read as RGBA (EXIF orientation applied, 16-bit "I" images scaled by 1/255), so an image
    without alpha gives an all-zero mask of its own size for ``channel="alpha"``.
    """
    img = ImageOps.exif_transpose(Image.open(path))
    if img.getbands() != ("R", "G", "B", "A"):
        if img.mode == "I":
            img = img.point(lambda px: px * (1 / 255))
        img = img.convert("RGBA")
    band = channel[0].upper()
    mask = torch.from_numpy(np.asarray(img.getchannel(band), dtype=np.float32) / 255.0)
    if band == "A":
        mask = 1.0 - mask
    return mask.unsqueeze(0)


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Resize ``[B,C,H,W]`` to ``width x height`` (ComfyUI's ``common_upscale``: optional centre crop first).

    A batch is resized item by item, with an interrupt check between items (a big batch can take a while).
    """
    if samples.ndim == 4 and samples.shape[0] > 1:
        from .interrupt import check

        out = []
        for item in samples.split(1):
            check()
            out.append(common_upscale(item, width, height, method, crop))
        return torch.cat(out)
    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    if method == "bislerp":
        return _bislerp(samples, width, height)
    if method == "lanczos":
        return _lanczos(samples, width, height)
    mode = {"nearest-exact": "nearest-exact", "bilinear": "bilinear", "area": "area", "bicubic": "bicubic"}.get(method)
    if mode is None:
        raise ValueError(f"unknown upscale_method {method!r}")
    return torch.nn.functional.interpolate(samples, size=(height, width), mode=mode)


def _lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Lanczos through PIL per channel image, as ComfyUI does (8-bit round trip)."""
    out = []
    for item in samples:
        arr = np.clip(255.0 * item.movedim(0, -1).float().cpu().numpy(), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr if arr.shape[-1] != 1 else arr[..., 0])
        im = im.resize((width, height), resample=Image.Resampling.LANCZOS)
        res = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
        if res.ndim == 2:
            res = res.unsqueeze(-1)
        out.append(res.movedim(-1, 0))
    return torch.stack(out).to(samples.device, samples.dtype)


def _slerp(b1: torch.Tensor, b2: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of feature vectors (rows), keeping the interpolated norm."""
    c = b1.shape[-1]
    n1, n2 = b1.norm(dim=-1, keepdim=True), b2.norm(dim=-1, keepdim=True)
    b1n, b2n = b1 / n1, b2 / n2
    b1n[n1.expand(-1, c) == 0.0] = 0.0
    b2n[n2.expand(-1, c) == 0.0] = 0.0
    dot = (b1n * b2n).sum(1)
    omega = torch.acos(dot.clamp(-1.0, 1.0))
    so = torch.sin(omega)
    res = (torch.sin((1.0 - r.squeeze(1)) * omega) / so).unsqueeze(1) * b1n \
        + (torch.sin(r.squeeze(1) * omega) / so).unsqueeze(1) * b2n
    res = res * (n1 * (1.0 - r) + n2 * r).expand(-1, c)
    res[dot > 1 - 1e-5] = b1[dot > 1 - 1e-5]
    res[dot < 1e-5 - 1] = (b1 * (1.0 - r) + b2 * r)[dot < 1e-5 - 1]
    return res


def _bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear resize with slerp between latent vectors instead of linear mixing."""
    orig_dtype = samples.dtype
    samples = samples.float()
    n, c, h, w = samples.shape

    def coords(length_old: int, length_new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # on the samples' device: index_select wants its index where the tensor is
        pos = (torch.arange(length_new, dtype=torch.float32, device=samples.device) + 0.5) * (length_old / length_new) - 0.5
        pos = pos.clamp(0, length_old - 1)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=length_old - 1)
        return lo, hi, pos - lo

    def resize_axis(x: torch.Tensor, new: int, axis: int) -> torch.Tensor:
        old = x.shape[axis]
        lo, hi, ratio = coords(old, new)
        a = x.index_select(axis, lo).movedim(1, -1)
        b = x.index_select(axis, hi).movedim(1, -1)
        shape = a.shape
        rshape = [1] * (len(shape) - 1)
        rshape[axis - 1] = new  # the axis moved one left once channels went last
        r = ratio.view(rshape).expand(shape[:-1]).reshape(-1, 1)
        res = _slerp(a.reshape(-1, c), b.reshape(-1, c), r)
        return res.reshape(shape).movedim(-1, 1)

    out = resize_axis(samples, width, 3)
    out = resize_axis(out, height, 2)
    return out.to(orig_dtype)
