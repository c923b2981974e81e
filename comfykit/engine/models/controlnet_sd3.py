"""SD3/SD3.5 ControlNets on diffusers' ``SD3ControlNetModel``: a VAE-encoded hint, residuals per MMDiT block.

ComfyUI's semantics (its ``load_controlnet_mmdit``): the hint image is resized to the latent x 8, VAE-encoded and
scaled by SD3's latent scale without the shift; the pooled text is zeroed; block k's output is repeated for
``depth // blocks`` MMDiT blocks (one fewer for the last), so a 12-block ControlNet steers a 24-block model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from .dit_common import build_on_meta, config_from_folder, pad_to_patch, vae_hint_ratio


def infer_sd3_controlnet_config(sd: dict[str, Any]) -> dict[str, Any]:
    """``SD3ControlNetModel`` kwargs from diffusers-layout tensor shapes (a ControlNet with its own patch embed)."""
    from .sd3 import sd3_trunk_config

    config = sd3_trunk_config(sd)
    return {**config, "out_channels": config["in_channels"],
            "extra_conditioning_channels": sd["pos_embed_input.proj.weight"].shape[1] - config["in_channels"]}


class SD3ControlNet(nn.Module):
    """A diffusers ``SD3ControlNetModel`` giving ComfyUI's per-block residual list for the SD3 MMDiT."""

    kind = "sd3"

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @property
    def width(self) -> int:
        """The token width of its blocks (the MMDiT's)."""
        return self.net.config.num_attention_heads * self.net.config.attention_head_dim

    def describe(self) -> str:
        """What it is for, as far as the shapes say."""
        return f"an SD3/SD3.5 ControlNet ({self.net.config.num_layers} blocks, width {self.width})"

    def check(self, model: Any, name: str) -> None:
        """ModelError unless ``model`` is an SD3 MMDiT of the same width and text width."""
        cfg = model.config
        ok = getattr(model, "arch", "") == "sd3" and isinstance(cfg, dict) and (
            cfg["num_attention_heads"] * cfg["attention_head_dim"] == self.width
            and cfg["joint_attention_dim"] == self.net.config.joint_attention_dim)
        if not ok:
            raise ModelError(f"{name}: this is {self.describe()} but the model is {model.arch} "
                             f"({model.family.describe(model.config)}); use a ControlNet made for {model.arch}")

    def hint_ratio(self, vae: Any) -> int:
        """Hint pixels per latent pixel: the VAE's downscale (the hint is encoded to a latent)."""
        return vae_hint_ratio(vae, "ControlNetApplyAdvanced's vae, or ControlNetApplySD3")

    def prepare_hint(self, hint: torch.Tensor, control: Any, model: Any) -> torch.Tensor:
        """The hint image encoded with the apply node's VAE, scaled as ComfyUI's SD3 ControlNet (no shift)."""
        raw = control.vae.encode(hint.movedim(1, -1))
        return raw * model.latent_format.scale_factor

    def residuals(self, x: torch.Tensor, t: torch.Tensor, hint: torch.Tensor, context: torch.Tensor,
                  pooled: torch.Tensor | None) -> dict[str, list[torch.Tensor]]:
        """{"output": the residual after each MMDiT block}; ``t`` is sigma x 1000, as the SD3 family's timestep."""
        net = self.net
        dtype = net.pos_embed.proj.weight.dtype
        patch = net.config.patch_size
        x, hint = pad_to_patch(x.to(dtype), patch), pad_to_patch(hint.to(dtype), patch)
        if hint.shape[0] != x.shape[0]:
            hint = hint.expand(x.shape[0], -1, -1, -1)
        pooled = torch.zeros(x.shape[0], net.config.pooled_projection_dim, dtype=dtype, device=x.device)
        outs = net(hidden_states=x, controlnet_cond=hint, encoder_hidden_states=context.to(dtype),
                   pooled_projections=pooled, timestep=t.reshape(-1).expand(x.shape[0]).to(dtype),
                   return_dict=False)[0]
        depth = net.config.num_attention_heads  # ComfyUI's MMDiT depth: width = 64 x depth
        output: list[torch.Tensor] = []
        for i, out in enumerate(outs):
            count = depth // len(outs) - (1 if i == len(outs) - 1 else 0)
            output += [out] * count
        return {"output": output}


def build_sd3_controlnet(sd: dict[str, Any], layout: str, name: str, folder_config: dict[str, Any] | None = None
                         ) -> nn.Module:
    """An :class:`SD3ControlNet` from a diffusers-layout state dict, or for Stability's own SD3.5 layout
    ("sd3-sai": canny/depth/blur) a :class:`~.controlnet_sd35.SD35ControlNet`."""
    from diffusers import SD3ControlNetModel

    if layout == "sd3-sai":
        from .controlnet_sd35 import build_sd35_controlnet

        return build_sd35_controlnet(sd, name)
    try:
        config = infer_sd3_controlnet_config(sd)
    except (KeyError, IndexError) as e:
        raise ModelError(f"{name}: the SD3 ControlNet weights are incomplete (missing {e}); re-download the file"
                         ) from None
    config = config_from_folder(config, folder_config or {})
    return SD3ControlNet(build_on_meta(lambda: SD3ControlNetModel(**config), sd, "SD3 ControlNet", name))


def block_residuals(control: dict[str, list] | None, blocks: int) -> list[torch.Tensor] | None:
    """ComfyUI's "output" residual list as diffusers' ``block_controlnet_hidden_states``: one per block (zeros where
    ComfyUI adds nothing), so block i gets exactly residual i."""
    outputs = (control or {}).get("output") or []
    given = [o for o in outputs if o is not None]
    if not given:
        return None
    zero = torch.zeros_like(given[0])
    return [outputs[i] if i < len(outputs) and outputs[i] is not None else zero for i in range(blocks)]


@contextmanager
def last_block_residual(transformer: nn.Module, control: dict[str, list] | None) -> Iterator[None]:
    """While it is open, the transformer's last MMDiT block adds its residual too.

    diffusers' SD3 transformer skips the last block (its context is pre-only); ComfyUI's MMDiT adds a residual
    after every block it has one for (Stability's SD3.5 ControlNets give one to all 38 blocks of SD3.5 Large).
    Whether there is one is read off the list, not the tensor's values: no device sync per step.
    """
    outputs = (control or {}).get("output") or []
    blocks = len(transformer.transformer_blocks)
    last = outputs[blocks - 1] if len(outputs) >= blocks else None
    if last is None:
        yield
        return

    def add(_module: nn.Module, _args: Any, out: Any) -> Any:
        context, hidden = out
        return context, hidden + last.to(hidden)

    handle = transformer.transformer_blocks[-1].register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()
