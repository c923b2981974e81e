"""The dtype each kind of network computes in on a device: ComfyUI 0.3.64's choices, in one place.

============================  =====  ===========================  ==========================================
network                       CPU    GPU with native bf16         GPU without it (T4, V100, RTX 20xx, P100)
                                     (A100, L4, H100, RTX 30xx+)
============================  =====  ===========================  ==========================================
SD1.x/SD2.x/SDXL UNets, SD3   fp32   fp16                         fp16
FLUX.1                        fp32   bf16 (activations overflow   fp16 (the transformer clamps them)
                                     fp16)
text encoders                 fp32   fp16                         fp16 (T5's math clamps in fp16)
VAE                           fp32   bf16                         fp32 (the SD/SDXL VAEs overflow in fp16)
============================  =====  ===========================  ==========================================

"Native" means compute capability 8.0 or newer. ``torch.cuda.is_bf16_supported()`` also says True on a T4,
where bf16 is emulated and several times slower than fp16, so it is not what decides. GPUs where fp16 is slow or
broken (GTX 10xx/16xx, Kepler/Maxwell) compute in fp32, as in ComfyUI. Apple's MPS has bf16 from macOS 14.

>>> precision_for("cpu")
Precision(unet=torch.float32, dit=torch.float32, text_encoder=torch.float32, vae=torch.float32)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: the names Engine(dtype=...) and the --*-dtype flags accept
DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
               "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_dtype(value: torch.dtype | str | None, what: str = "dtype") -> torch.dtype | None:
    """A torch dtype from a dtype or one of DTYPE_NAMES (None stays None: the device's default)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    try:
        return DTYPE_NAMES[value]
    except KeyError:
        raise ValueError(f"{what}={value!r} is not known; use one of {', '.join(DTYPE_NAMES)}") from None


@dataclass(frozen=True)
class Precision:
    """Compute dtypes on one device: SD UNets and SD3 (``unet``), FLUX.1 (``dit``), text encoders, VAE."""

    unet: torch.dtype
    dit: torch.dtype
    text_encoder: torch.dtype
    vae: torch.dtype


@dataclass(frozen=True)
class GpuKind:
    """What decides a GPU's dtypes: native bf16 (capability >= 8.0) and whether fp16 is fast and sound."""

    native_bf16: bool
    fast_fp16: bool


def gpu_kind(device: torch.device) -> GpuKind:
    """The device's kind (CUDA: from its capability and name; MPS: from the macOS version)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name = torch.cuda.get_device_name(index)
        return cuda_kind((major, minor), name)
    if device.type == "mps":
        newer = getattr(torch.backends.mps, "is_macos_or_newer", None)
        return GpuKind(native_bf16=bool(newer and newer(14, 0)), fast_fp16=True)
    return GpuKind(native_bf16=False, fast_fp16=True)  # other accelerators: fp16, as before


def cuda_kind(capability: tuple[int, int], name: str) -> GpuKind:
    """ComfyUI's rules for an NVIDIA GPU of this compute capability and name."""
    major = capability[0]
    # GTX 16xx give black pictures in fp16, consumer Pascal (GTX 10xx, P40) runs it at 1/64 speed; P100 is fine
    slow = "GTX 16" in name or " MX" in name or (major == 6 and "P100" not in name) or major < 6
    return GpuKind(native_bf16=major >= 8, fast_fp16=not slow)


def precision_for(device: Any, unet: torch.dtype | None = None, text_encoder: torch.dtype | None = None,
                  vae: torch.dtype | None = None) -> Precision:
    """The dtypes on `device`; `unet` (Engine's ``dtype``) overrides every diffusion model, the others their kind."""
    device = torch.device(device)
    if device.type == "cpu":
        half = bf16 = torch.float32
    else:
        kind = gpu_kind(device)
        half = torch.float16 if kind.fast_fp16 else torch.float32
        bf16 = torch.bfloat16 if kind.native_bf16 else half
    return Precision(unet=unet or half, dit=unet or bf16, text_encoder=text_encoder or half,
                     vae=vae or (torch.bfloat16 if bf16 == torch.bfloat16 else torch.float32))
