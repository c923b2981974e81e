"""Stability's Control-LoRAs (``control-lora-*-rank128/256.safetensors``, marked by a ``lora_controlnet`` key).

A Control-LoRA stores a ControlNet as changes to the UNet it is used with. Following ComfyUI 0.3.64's
``ControlLora``, the ControlNet is built when sampling starts, from the model's own UNet:

- the encoder half of the model's UNet (``time_embed``, ``label_emb``, ``input_blocks``, ``middle_block``) gives
  the starting weights;
- the file's full tensors (biases, norms, the hint encoder ``input_hint_block``, ``zero_convs``,
  ``middle_block_out``) replace or add to them;
- each ``<layer>.up`` / ``<layer>.down`` pair adds ``up @ down`` (both flattened after the first axis) to that
  layer's weight.

The merged LDM-layout ControlNet then runs on diffusers' ``ControlNetModel`` (``controlnet.UNetControlNet``).
ComfyUI adds ``up @ down`` inside every forward; merging once gives the same weights.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from .controlnet import UNetControlNet, build_unet_controlnet, ldm_to_diffusers

MARKER = "lora_controlnet"
ENCODER = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.")


def _name(key: str) -> str:
    return key.replace(".", "/")  # ParameterDict names may not contain dots


class ControlLora(nn.Module):
    """A Control-LoRA file's tensors; :meth:`check` builds its ControlNet on a model's UNet (kept until another)."""

    kind = "control-lora"

    def __init__(self, sd: dict[str, Any], name: str = ""):
        super().__init__()
        self.name = name
        weights = {k: v for k, v in sd.items() if k != MARKER and v.is_floating_point()}
        if "input_hint_block.0.weight" not in weights or "zero_convs.0.0.weight" not in weights:
            raise ModelError(f"{name}: a Control-LoRA without its hint encoder or zero convolutions "
                             "(input_hint_block / zero_convs); the file is damaged, re-download it")
        self.weights = nn.ParameterDict({_name(k): nn.Parameter(v, requires_grad=False) for k, v in weights.items()})
        self.built: nn.Module | None = None
        self._base: Any = None  # a weak reference to the UNet `built` was made from

    def tensor(self, key: str) -> torch.Tensor:
        """One of the file's tensors, by its key."""
        return self.weights[_name(key)]

    def keys(self) -> list[str]:
        """The file's tensor keys (without the marker)."""
        return [k.replace("/", ".") for k in self.weights]

    @property
    def rank(self) -> int:
        """The LoRA rank (128 or 256 for Stability's files)."""
        return next((self.weights[k].shape[0] for k in self.weights if k.endswith("/down")), 0)

    @property
    def model_channels(self) -> int:
        """The width of the UNet it was made for (its first zero convolution's)."""
        return self.tensor("zero_convs.0.0.weight").shape[0]

    @property
    def adm(self) -> bool:
        """Made for an SDXL-style UNet (it changes ``label_emb``)?"""
        return any(k.startswith("label_emb/") for k in self.weights)

    def describe(self) -> str:
        """What it is for, as far as the shapes say."""
        what = "an SDXL" if self.adm else "an SD1.x/SD2.x"
        return f"{what} Control-LoRA (rank {self.rank}, UNet width {self.model_channels})"

    def merged(self, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The LDM-layout ControlNet state dict: ``base`` (a UNet's) with this file's tensors and deltas applied."""
        out = {k: v for k, v in base.items() if k.startswith(ENCODER)}
        for key in self.keys():
            if key.endswith(".down"):
                continue
            value = self.tensor(key).detach()
            if key.endswith(".up"):
                target = key[:-3] + ".weight"
                down = self.tensor(key[:-3] + ".down").detach()
                weight = out[target]
                delta = (value.flatten(1).float() @ down.flatten(1).float()).reshape(weight.shape)
                out[target] = (weight.float() + delta.to(weight.device)).to(weight.dtype)
            else:
                out[key] = value
        return out

    def check(self, model: Any, name: str) -> None:
        """Build (or reuse) the ControlNet for the UNet of ``model``; ModelError when the file does not fit it."""
        cfg = model.config
        ok = hasattr(cfg, "model_channels") and cfg.model_channels == self.model_channels and \
            bool(cfg.adm_in_channels) == self.adm
        base_net = model.network
        if ok and self.built is not None and self._base is not None and self._base() is base_net:
            return
        merged = None
        if ok:
            try:
                merged = self.merged(base_net.state_dict())
            except (KeyError, RuntimeError):  # a layer the UNet lacks, or deltas of another shape
                merged = None
        if merged is None:
            what = model.family.describe(cfg) if hasattr(model, "family") else repr(model)
            raise ModelError(f"{name}: this is {self.describe()} but the model is {model.arch} ({what}); use a "
                             f"Control-LoRA made for {model.arch}")
        heads = [cfg.heads(cfg.model_channels * m)[0] for m in cfg.channel_mult]
        net: UNetControlNet = build_unet_controlnet(ldm_to_diffusers(merged), name, {"attention_head_dim": heads})
        dtype = next(base_net.parameters()).dtype
        self.built = nn.Module.to(net, device=next(base_net.parameters()).device, dtype=dtype)
        self._base = weakref.ref(base_net)

    hint_ratio = UNetControlNet.hint_ratio  # the hint as the ControlNet it builds takes it: pixels, unchanged
    prepare_hint = UNetControlNet.prepare_hint

    def residuals(self, x: torch.Tensor, t: torch.Tensor, hint: torch.Tensor, context: torch.Tensor,
                  y: torch.Tensor | None) -> dict[str, list[torch.Tensor]]:
        """The built ControlNet's residuals (see ``UNetControlNet.residuals``)."""
        if self.built is None:
            raise ValueError(f"{self.name}: a Control-LoRA is built on a model's UNet; sample with it applied")
        return self.built.residuals(x, t, hint, context, y)
