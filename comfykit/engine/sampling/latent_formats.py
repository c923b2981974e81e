"""Latent formats: how raw VAE latents map to the model's space, plus preview factors (ComfyUI's facts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LatentFormat:
    """One latent space: `process_in(x) = (x - shift) * scale`, `process_out` its inverse, preview data."""

    name: str
    scale_factor: float
    shift_factor: float = 0.0
    latent_channels: int = 4
    rgb_factors: tuple[tuple[float, float, float], ...] | None = None  # rows = latent channels, cols = R, G, B
    rgb_bias: tuple[float, float, float] | None = None
    taesd_decoder_name: str | None = None

    def process_in(self, x: Any) -> Any:
        """Raw VAE latent -> the space the diffusion model works in."""
        return (x - self.shift_factor) * self.scale_factor

    def process_out(self, x: Any) -> Any:
        """Model-space latent -> raw VAE latent."""
        return x / self.scale_factor + self.shift_factor

    def __repr__(self) -> str:
        return f"LatentFormat({self.name}, scale={self.scale_factor}, shift={self.shift_factor}, ch={self.latent_channels})"


SD15 = LatentFormat(
    "SD15", 0.18215, 0.0, 4,
    rgb_factors=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
    rgb_bias=None,
    taesd_decoder_name="taesd_decoder",
)

SDXL = LatentFormat(
    "SDXL", 0.13025, 0.0, 4,
    rgb_factors=(
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    rgb_bias=(0.1084, -0.0175, -0.0011),
    taesd_decoder_name="taesdxl_decoder",
)

SD3 = LatentFormat(
    "SD3", 1.5305, 0.0609, 16,
    rgb_factors=(
        (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
        (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
        (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
        (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293), (-0.1448, -0.1463, -0.1189),
    ),
    rgb_bias=(0.2394, 0.2135, 0.1925),
    taesd_decoder_name="taesd3_decoder",
)

Flux = LatentFormat(
    "Flux", 0.3611, 0.1159, 16,
    rgb_factors=(
        (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
        (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
        (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
        (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
    ),
    rgb_bias=(-0.0329, -0.0718, -0.0851),
    taesd_decoder_name="taef1_decoder",
)

FORMATS: dict[str, LatentFormat] = {f.name: f for f in (SD15, SDXL, SD3, Flux)}
