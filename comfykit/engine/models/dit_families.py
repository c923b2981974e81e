"""FLUX.1 and SD3/SD3.5 as model families: diffusers' transformers (flux.py, sd3.py) behind the family seam.

Network code is diffusers' ``FluxTransformer2DModel`` and ``SD3Transformer2DModel``; what this module adds is
ComfyUI's conditioning semantics: which options of a CONDITIONING entry reach the network and how.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..sampling import latent_formats
from ..sampling.schedulers import ModelSamplingDiscreteFlow, ModelSamplingFlux
from .dit_common import convert_scaled, detect_layout
from .family import DiffusionModel, ModelFamily, ModelInputs
from .flux import FluxModel, flux_concat, flux_to_diffusers, infer_flux_config
from .precision import Precision
from .sd3 import SD3Model, infer_sd3_config, sd3_to_diffusers

#: ComfyUI's default distilled guidance when a FLUX.1 dev conditioning sets none (FluxGuidance's default too)
DEFAULT_GUIDANCE = 3.5


def _prefixed(sd: dict[str, Any]) -> dict[str, Any]:
    """Diffusers transformer keys as the adapter module (``.transformer``) names them."""
    return {"transformer." + k: v for k, v in sd.items()}


class FluxFamily(ModelFamily):
    """FLUX.1 schnell, dev and the plain-transformer derivatives (Krea, Kontext; Fill/Canny/Depth with concat)."""

    name = "flux"
    latent_format = latent_formats.Flux
    text_encoders = ("clip_l", "t5xxl")
    repeat_context = False  # joint attention: repeating text tokens would change the weights

    def detect(self, parts: dict[str, dict[str, Any]]) -> bool:
        return (detect_layout(parts["unet"]) or "").startswith("flux")

    def compute_dtype(self, precision: Precision) -> torch.dtype:
        return precision.dit  # bf16 where the GPU has it: FLUX.1's activations overflow fp16

    def convert(self, sd: dict[str, Any], dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        # scaled fp8 stays fp8: the scales travel to the diffusers names and fp8.CastLinear applies them
        bfl = detect_layout(sd) == "flux-bfl"
        return _prefixed(convert_scaled(lambda d: flux_to_diffusers(d, consume=True) if bfl else d, sd))

    def config(self, sd: dict[str, Any], parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return infer_flux_config({k[len("transformer."):]: v for k, v in sd.items()})

    def build(self, config: dict[str, Any]) -> nn.Module:
        from diffusers import FluxTransformer2DModel

        return FluxModel(FluxTransformer2DModel(**config))

    def model_sampling(self, config: dict[str, Any], full: dict[str, Any], parts: dict[str, dict[str, Any]]) -> Any:
        # ComfyUI: dev (guidance-distilled) shifts its schedule by 1.15, schnell by 1.0
        return ModelSamplingFlux(shift=1.15 if config["guidance_embeds"] else 1.0)

    def model_inputs(self, model: DiffusionModel, cond: torch.Tensor, options: dict[str, Any],
                     x: torch.Tensor) -> ModelInputs:
        inputs = ModelInputs(context=cond, pooled=options.get("pooled_output"))
        if model.config["guidance_embeds"]:
            guidance = options.get("guidance", DEFAULT_GUIDANCE)  # an explicit None disables the guidance term
            inputs.guidance = None if guidance is None else torch.tensor([float(guidance)])
        fmt = self.latent_format
        inputs.concat = flux_concat(x, model.config["in_channels"], options.get("concat_latent_image"),
                                    options.get("concat_mask"), fmt.process_in)
        refs = options.get("reference_latents")
        if refs:
            inputs.ref_latents = tuple(fmt.process_in(r.float()) for r in refs)
        return inputs

    def forward(self, network: nn.Module, x: torch.Tensor, t: torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
        control = inputs.control(x, t, inputs) if inputs.control is not None else None
        return network(x, t, inputs.context, inputs.pooled, guidance=inputs.guidance, concat=inputs.concat,
                       ref_latents=list(inputs.ref_latents) if inputs.ref_latents else None, control=control)

    def describe(self, config: dict[str, Any]) -> str:
        kind = "dev" if config["guidance_embeds"] else "schnell"
        return f"{kind}, layers={config['num_layers']}+{config['num_single_layers']}"


class SD3Family(ModelFamily):
    """SD3 and SD3.5 medium/large MMDiTs: CLIP-L + CLIP-G (+ optional T5-XXL), shifted flow schedule."""

    name = "sd3"
    latent_format = latent_formats.SD3
    text_encoders = ("clip_l", "clip_g", "t5xxl")
    repeat_context = False

    def detect(self, parts: dict[str, dict[str, Any]]) -> bool:
        return (detect_layout(parts["unet"]) or "").startswith("sd3")

    def convert(self, sd: dict[str, Any], dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        sai = detect_layout(sd) == "sd3-sai"
        return _prefixed(convert_scaled(lambda d: sd3_to_diffusers(d, consume=True) if sai else d, sd))

    def config(self, sd: dict[str, Any], parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return infer_sd3_config({k[len("transformer."):]: v for k, v in sd.items()})

    def build(self, config: dict[str, Any]) -> nn.Module:
        from diffusers import SD3Transformer2DModel

        return SD3Model(SD3Transformer2DModel(**config))

    def model_sampling(self, config: dict[str, Any], full: dict[str, Any], parts: dict[str, dict[str, Any]]) -> Any:
        return ModelSamplingDiscreteFlow(shift=3.0)

    def model_inputs(self, model: DiffusionModel, cond: torch.Tensor, options: dict[str, Any],
                     x: torch.Tensor) -> ModelInputs:
        return ModelInputs(context=cond, pooled=options.get("pooled_output"))

    def forward(self, network: nn.Module, x: torch.Tensor, t: torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
        # the family's timestep is sigma x 1000 (ModelSamplingDiscreteFlow); the adapter takes sigma
        control = inputs.control(x, t, inputs) if inputs.control is not None else None
        return network(x, t / 1000.0, inputs.context, inputs.pooled, concat=inputs.concat, control=control)

    def describe(self, config: dict[str, Any]) -> str:
        return f"layers={config['num_layers']}, width={config['num_attention_heads'] * config['attention_head_dim']}"


DIT_FAMILIES: tuple[ModelFamily, ...] = (FluxFamily(), SD3Family())
