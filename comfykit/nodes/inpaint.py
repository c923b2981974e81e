"""Inpainting and outpainting nodes: VAEEncodeForInpaint and ImagePadForOutpaint (ComfyUI's nodes.py).

VAEEncodeForInpaint greys out the masked pixels before encoding and sets the latent's ``noise_mask``, which the
samplers honour (only the masked region changes, see ``sampling.ksampler.InpaintDenoiser``); an inpainting
checkpoint (9 input channels) reads the mask and the greyed latent through the same ``denoise_mask`` /
``latent_image`` the sampler passes it.
"""

from __future__ import annotations

import math
from typing import Any

from .base import INT, LINK, MAX_RESOLUTION, Node


def _mask_to(mask: Any, height: int, width: int, batch: int) -> Any:
    """A MASK ([H, W], [B, H, W] or [B, 1, H, W]) as [B', 1, height, width] floats, bilinear like ComfyUI."""
    import torch

    mask = torch.as_tensor(mask, dtype=torch.float32)
    if mask.ndim < 2:
        raise ValueError(f"mask must be [H, W] or [B, H, W], got shape {list(mask.shape)}")
    mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"the mask has {mask.shape[0]} items but the image {batch}; give one mask, or one per "
                         "image")
    return torch.nn.functional.interpolate(mask, size=(height, width), mode="bilinear")


class VAEEncodeForInpaint(Node):
    """Encodes images with the masked part set to grey, and marks that part (grown a little) for repainting."""

    DISPLAY, CATEGORY = "VAE Encode (for Inpainting)", "latent/inpaint"
    INPUTS = {"pixels": LINK("IMAGE"), "vae": LINK("VAE"), "mask": LINK("MASK"),
              "grow_mask_by": INT(6, 0, 64, 1)}
    OUTPUTS = ("LATENT",)
    FUNCTION = "encode"

    def encode(self, pixels: Any, vae: Any, mask: Any, grow_mask_by: int) -> tuple[dict[str, Any]]:
        import torch

        ratio = getattr(vae, "downscale", 8)
        h, w = pixels.shape[1] // ratio * ratio, pixels.shape[2] // ratio * ratio
        mask = _mask_to(mask, pixels.shape[1], pixels.shape[2], pixels.shape[0])
        pixels = pixels[..., :3].clone()
        if (h, w) != tuple(pixels.shape[1:3]):  # centre-crop to whole latent cells
            dy, dx = (pixels.shape[1] % ratio) // 2, (pixels.shape[2] % ratio) // 2
            pixels = pixels[:, dy:dy + h, dx:dx + w, :]
            mask = mask[:, :, dy:dy + h, dx:dx + w]
        hard = mask.round()
        if grow_mask_by == 0:
            grown = mask
        else:  # dilate by a box of grow_mask_by pixels, so the seam falls inside the repainted latent cells
            kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
            grown = torch.clamp(torch.nn.functional.conv2d(hard, kernel, padding=math.ceil((grow_mask_by - 1) / 2)),
                                0, 1)
        keep = (1.0 - hard).squeeze(1)[..., None]
        pixels = (pixels - 0.5) * keep + 0.5  # the masked pixels become mid-grey (0.5)
        samples = self.call_with(lambda: vae.encode(pixels), vae)
        return ({"samples": samples, "noise_mask": grown[:, :, :h, :w].round()},)


class ImagePadForOutpaint(Node):
    """Pads images with grey for outpainting; the mask is 1 on the padding and fades (squared) into the image."""

    DISPLAY, CATEGORY = "Pad Image for Outpainting", "image"
    INPUTS = {"image": LINK("IMAGE"),
              "left": INT(0, 0, MAX_RESOLUTION, 8), "top": INT(0, 0, MAX_RESOLUTION, 8),
              "right": INT(0, 0, MAX_RESOLUTION, 8), "bottom": INT(0, 0, MAX_RESOLUTION, 8),
              "feathering": INT(40, 0, MAX_RESOLUTION, 1)}
    OUTPUTS = ("IMAGE", "MASK")
    FUNCTION = "expand_image"

    def expand_image(self, image: Any, left: int, top: int, right: int, bottom: int,
                     feathering: int) -> tuple[Any, Any]:
        import torch

        b, h, w, c = image.shape
        out = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=torch.float32)
        out[:, top:top + h, left:left + w, :] = image
        mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
        inner = torch.zeros((h, w), dtype=torch.float32)
        if 0 < feathering and feathering * 2 < h and feathering * 2 < w:
            # distance to the nearest padded side (ComfyUI counts rows from the top edge as 0.., from the bottom
            # edge as ..1); sides without padding do not fade
            rows, cols = torch.arange(h)[:, None], torch.arange(w)[None, :]
            far_h, far_w = torch.full_like(rows, h), torch.full_like(cols, w)
            dist = torch.minimum(torch.minimum(rows if top else far_h, (h - rows) if bottom else far_h),
                                 torch.minimum(cols if left else far_w, (w - cols) if right else far_w))
            fade = ((feathering - dist) / feathering).clamp(min=0) ** 2
            inner = torch.where(dist < feathering, fade, inner)
        mask[top:top + h, left:left + w] = inner
        return (out, mask.unsqueeze(0))
