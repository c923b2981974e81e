"""TAESD (madebyollin's Tiny AutoEncoder for Stable Diffusion) decoder, for cheap live previews."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of the latent to about [-3, 3]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Residual block: three 3x3 convs with ReLUs, plus a (1x1 if needed) skip, then ReLU."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def Decoder(latent_channels: int = 4) -> nn.Sequential:  # noqa: N802 - named like the checkpoint's module
    """The TAESD decoder: latent [B, C, h, w] -> image [B, 3, 8h, 8w] in about [0, 1]."""
    layers: list[nn.Module] = [Clamp(), _conv(latent_channels, 64), nn.ReLU()]
    for _ in range(3):
        layers += [Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2),
                   _conv(64, 64, bias=False)]
    layers += [Block(64, 64), _conv(64, 3)]
    return nn.Sequential(*layers)


def load_taesd_decoder(path: str | Path, latent_channels: int = 4, device: str | torch.device = "cpu") -> nn.Module:
    """A TAESD decoder with weights from a `taesd*_decoder.safetensors` / `.pth` file in `vae_approx`."""
    from comfykit.errors import ModelError

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or truncated file
        raise ModelError(f"cannot read TAESD decoder {path}: {exc}") from exc
    for prefix in ("decoder.", "taesd_decoder."):  # files saved from a full TAESD module
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if "1.weight" in state:
        latent_channels = int(state["1.weight"].shape[1])
    decoder = Decoder(latent_channels)
    try:
        decoder.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{path.name} is not a TAESD decoder (keys like '1.weight', '3.conv.0.weight'): "
                         f"{str(exc).splitlines()[0]}") from exc
    return decoder.to(device).eval().requires_grad_(False)
