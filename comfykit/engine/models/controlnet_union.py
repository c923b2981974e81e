"""Union ControlNets (xinsir's ControlNet++ ``controlnet-union-sdxl-1.0`` and its ProMax file) on diffusers'
``ControlNetUnionModel``; ``SetUnionControlNetType`` picks the control type.

The files are in diffusers' layout plus the union parts (``task_embedding``, ``transformer_layes``,
``spatial_ch_projs``, ``control_add_embedding``); the number of control types comes from ``task_embedding``'s shape
(6 for the first release, 8 for ProMax, which adds tile and repaint).

Semantics follow ComfyUI 0.3.64 (its ``cldm.ControlNet`` with ``union_controlnet_num_control_type``):

- the one-hot control type (all zeros for "auto") is embedded like a timestep (256 wide per type) and added to the
  time embedding;
- with a type set, the embedded hint's spatial mean plus the type's task embedding goes through the small
  transformer as one token per image, and its projection is added to the embedded hint ("auto": the plain hint);
- a type the file does not have (tile or repaint on the first release) is an error that points to ProMax.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ModelError
from .controlnet import UNION_TYPES, UNetControlNet, infer_controlnet_config
from .dit_common import build_on_meta, config_from_folder

#: ComfyUI's union head: 8 attention heads (the shapes do not say)
TRANSFORMER_HEADS = 8


def infer_union_config(sd: dict[str, Any]) -> dict[str, Any]:
    """``ControlNetUnionModel`` kwargs from diffusers-layout tensor shapes."""
    config = infer_controlnet_config(sd)
    config.pop("mid_block_type")  # always a cross-attention middle block
    types, width = sd["task_embedding"].shape
    layers = len({k.split(".")[1] for k in sd if k.startswith("transformer_layes.")})
    config.update(num_control_type=types, num_trans_channel=width, num_trans_head=TRANSFORMER_HEADS,
                  num_trans_layer=layers, num_proj_channel=sd["spatial_ch_projs.weight"].shape[0],
                  addition_time_embed_dim=sd["control_add_embedding.linear_1.weight"].shape[1] // types)
    return config


class UnionControlNet(UNetControlNet):
    """A diffusers ``ControlNetUnionModel`` giving ComfyUI's residual lists, for the control type it is told."""

    @property
    def control_types(self) -> int:
        """How many control types the file knows (6, or 8 for ProMax)."""
        return self.net.config.num_control_type

    def describe(self) -> str:
        """What family it is for, as far as the shapes say."""
        promax = " ProMax" if self.control_types >= 8 else ""
        return f"{super().describe()[:-1]}, union{promax} with {self.control_types} control types)"

    def check_type(self, union_type: int | None, name: str) -> None:
        """ModelError when the file has no ``union_type`` (ComfyUI's check: tile and repaint need ProMax)."""
        if union_type is not None and union_type >= self.control_types:
            raise ModelError(f"{name}: control type {UNION_TYPES[union_type + 1]}({union_type}) is out of range for "
                             f"the number of control types ({self.control_types}) this union ControlNet supports; "
                             "use the ProMax union model (xinsir/controlnet-union-sdxl-1.0, "
                             "diffusion_pytorch_model_promax.safetensors)")

    def run_options(self, control: Any, inputs: Any) -> dict[str, Any]:
        """What a call needs beyond x, t, hint, context and pooled: SetUnionControlNetType's type."""
        return {"union_type": control.union_type}

    def residuals(self, x: torch.Tensor, t: torch.Tensor, hint: torch.Tensor, context: torch.Tensor,
                  y: torch.Tensor | None, union_type: int | None = None) -> dict[str, list[torch.Tensor]]:
        """As :meth:`UNetControlNet.residuals`, reading the hint as control type ``union_type`` (None: auto)."""
        net = self.net
        dtype = net.conv_in.weight.dtype
        onehot = torch.zeros(self.control_types, device=x.device)
        if union_type is not None:
            onehot[union_type] = 1.0
        types = net.control_type_proj(onehot).reshape(1, -1).to(dtype)
        emb = self.embed(x, t, y) + net.control_add_embedding(types)
        guided = net.controlnet_cond_embedding(hint.to(dtype))
        if union_type is not None:
            feat = guided.mean(dim=(2, 3)) + net.task_embedding[union_type].to(dtype)
            # one token per image: (sequence 1, batch B) for the sequence-first attention, so images stay apart
            token = feat.unsqueeze(0)
            for layer in net.transformer_layes:
                token = layer(token)
            guided = guided + net.spatial_ch_projs(token[0])[:, :, None, None]
        return self.trunk(x, emb, guided, context)


def build_union_controlnet(sd: dict[str, Any], name: str, folder_config: dict[str, Any] | None = None
                           ) -> UnionControlNet:
    """A :class:`UnionControlNet` from a diffusers-layout union state dict (ModelError when the shapes do not fit)."""
    from diffusers import ControlNetUnionModel

    try:
        config = infer_union_config(sd)
    except (KeyError, IndexError, ValueError) as e:
        raise ModelError(f"{name}: the union ControlNet weights are incomplete (missing {e}); re-download the file"
                         ) from None
    config = config_from_folder(config, folder_config, ("attention_head_dim", "num_attention_heads", "num_trans_head"))
    return UnionControlNet(build_on_meta(lambda: ControlNetUnionModel(**config), sd, "union ControlNet", name))
