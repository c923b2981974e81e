"""Conditioning edits: ConditioningZeroOut, ConditioningSetTimestepRange, and the image conditionings of
inpainting and InstructPix2Pix models (InpaintModelConditioning, InstructPixToPixConditioning).

The image conditionings set ComfyUI's options ``concat_latent_image`` (a raw VAE latent) and ``concat_mask``
(pixel-size, [B, 1, H, W]); a model with extra input channels reads them (``UNetFamily.model_inputs``).
"""

from __future__ import annotations

from typing import Any

from .base import BOOLEAN, FLOAT, LINK, Node
from .conditioning import set_options

_POSITIVE = LINK("CONDITIONING", "What the image should show.")
_NEGATIVE = LINK("CONDITIONING", "What the image should avoid.")


class ConditioningZeroOut(Node):
    """Zeros the text embedding and pooled output (the empty negative FLUX.1 and SD3 workflows use)."""

    DISPLAY, CATEGORY = "ConditioningZeroOut", "advanced/conditioning"
    INPUTS = {"conditioning": LINK("CONDITIONING", "Conditioning to zero.")}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "zero_out"

    def zero_out(self, conditioning: list) -> tuple[list]:
        import torch

        out = []
        for cond, opts in conditioning:
            opts = dict(opts)
            for key in ("pooled_output", "conditioning_lyrics"):
                if opts.get(key) is not None:
                    opts[key] = torch.zeros_like(opts[key])
            out.append([torch.zeros_like(cond), opts])
        return (out,)


class ConditioningSetTimestepRange(Node):
    """Applies a conditioning only between two points of sampling (0 = start, 1 = end)."""

    DISPLAY, CATEGORY = "ConditioningSetTimestepRange", "advanced/conditioning"
    INPUTS = {"conditioning": LINK("CONDITIONING", "Conditioning to limit."),
              "start": FLOAT(0.0, 0.0, 1.0, 0.001, "Fraction of sampling where it starts."),
              "end": FLOAT(1.0, 0.0, 1.0, 0.001, "Fraction of sampling where it stops.")}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "set_range"

    def set_range(self, conditioning: list, start: float, end: float) -> tuple[list]:
        return (set_options(conditioning, start_percent=start, end_percent=end),)


def _crop_to_8(pixels: Any, mask: Any = None) -> tuple[Any, Any]:
    """Centre-crop [B, H, W, C] images (and a [B, 1, H, W] mask) to multiples of 8 pixels, as ComfyUI."""
    h, w = pixels.shape[1] // 8 * 8, pixels.shape[2] // 8 * 8
    if (h, w) == tuple(pixels.shape[1:3]):
        return pixels, mask
    dy, dx = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
    pixels = pixels[:, dy:dy + h, dx:dx + w, :]
    if mask is not None:
        mask = mask[:, :, dy:dy + h, dx:dx + w]
    return pixels, mask


class InstructPixToPixConditioning(Node):
    """Gives an InstructPix2Pix model the image to edit; the latent output is an empty one of its size."""

    DISPLAY, CATEGORY, PYTHON_MODULE = None, "conditioning/instructpix2pix", "comfy_extras.nodes_ip2p"
    INPUTS = {"positive": _POSITIVE, "negative": _NEGATIVE, "vae": LINK("VAE", "VAE to encode the image with."),
              "pixels": LINK("IMAGE", "Image to edit.")}
    OUTPUTS = ("CONDITIONING", "CONDITIONING", "LATENT")
    OUTPUT_NAMES = ("positive", "negative", "latent")
    FUNCTION = "encode"

    def encode(self, positive: list, negative: list, vae: Any, pixels: Any) -> tuple[list, list, dict]:
        import torch

        pixels, _ = _crop_to_8(pixels)
        latent = self.call_with(lambda: vae.encode(pixels), vae)
        return (set_options(positive, concat_latent_image=latent), set_options(negative, concat_latent_image=latent),
                {"samples": torch.zeros_like(latent)})


class InpaintModelConditioning(Node):
    """Gives an inpainting model the image (masked part greyed out) and the mask; the latent is the whole image's."""

    DISPLAY, CATEGORY = "InpaintModelConditioning", "conditioning/inpaint"
    INPUTS = {"positive": _POSITIVE, "negative": _NEGATIVE, "vae": LINK("VAE", "VAE to encode the image with."),
              "pixels": LINK("IMAGE", "Image to inpaint."), "mask": LINK("MASK", "Where to repaint (1 = repaint)."),
              "noise_mask": BOOLEAN(True, "Add a noise mask to the latent so sampling will only happen within the "
                                          "mask. Might improve results or completely break things depending on "
                                          "the model.")}
    OUTPUTS = ("CONDITIONING", "CONDITIONING", "LATENT")
    OUTPUT_NAMES = ("positive", "negative", "latent")
    FUNCTION = "encode"

    def encode(self, positive: list, negative: list, vae: Any, pixels: Any, mask: Any,
               noise_mask: bool) -> tuple[list, list, dict]:
        import torch

        mask = torch.as_tensor(mask, dtype=torch.float32)
        mask = torch.nn.functional.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])),
                                               size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
        pixels, mask = _crop_to_8(pixels, mask)
        keep = (1.0 - mask.round()).squeeze(1)[..., None]
        masked = (pixels[..., :3] - 0.5) * keep + 0.5  # the repainted region becomes mid-grey
        concat = self.call_with(lambda: vae.encode(masked), vae)
        latent = {"samples": self.call_with(lambda: vae.encode(pixels[..., :3]), vae)}
        if noise_mask:
            latent["noise_mask"] = mask
        options = {"concat_latent_image": concat, "concat_mask": mask}
        return set_options(positive, **options), set_options(negative, **options), latent
