"""The model-family seam: how one kind of diffusion model is recognised, sized, converted, built and conditioned.

A family answers four questions about a diffusion-model state dict, in order:

1. ``detect(parts)``: is this mine? (from key names; ``parts`` is the split checkpoint, see ``keys.split_checkpoint``)
2. ``convert(sd, dtype)``: the state dict in the network's own key names (diffusers' converters where they exist)
3. ``config(sd, parts)``: what shape is it? (read off the converted tensor shapes, never from a hub)
4. ``build(config)``: the network module (built on the meta device by the loader, then filled with ``assign=True``)

and then serves the one sampling contract every sampler uses (:class:`DiffusionModel`):
``model_inputs(cond, options, x)`` turns one CONDITIONING entry into :class:`ModelInputs`, and
``forward(network, x, t, inputs)`` runs the network. Adding a family is a subclass of :class:`ModelFamily` added to
``FAMILIES`` (see docs/architecture.md for an example).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from ..sampling.latent_formats import LatentFormat
from .precision import Precision


@dataclass
class ModelInputs:
    """Everything one model call gets besides the latent and the timestep; each tensor is batched on dim 0."""

    context: torch.Tensor | None = None  # text tokens for cross- or joint attention [B, T, D]
    pooled: torch.Tensor | None = None  # a vector per item: SDXL's adm y, SD3/Flux pooled text [B, P]
    guidance: torch.Tensor | None = None  # distilled guidance strength (FLUX.1 dev) [B]
    concat: torch.Tensor | None = None  # extra input channels concatenated to x (inpaint, depth, canny, fill)
    ref_latents: tuple[torch.Tensor, ...] | None = None  # reference latents in model space (FLUX.1 Kontext)
    control: Any = None  # ControlNet: control(x, t, inputs) -> {"input"|"middle"|"output": [residuals]}

    def batch_key(self, repeat_context: bool) -> tuple:
        """Entries with equal keys can share one model call (their tensors concatenate on dim 0)."""
        key = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                shape = tuple(value.shape[1:])
                if f.name == "context" and repeat_context:
                    shape = shape[1:]  # token counts may differ: repeated to a common length
                key.append((f.name, shape))
            elif f.name == "ref_latents" and value:
                key.append((f.name, tuple(tuple(r.shape) for r in value)))
            elif value is not None:
                key.append((f.name, id(value)))
        return tuple(key)

    @staticmethod
    def cat(items: list[ModelInputs], batch: int, repeat_context: bool) -> ModelInputs:
        """One ModelInputs for ``len(items)`` calls of ``batch`` items each (entries of batch 1 are repeated)."""
        first = items[0]
        out = {}
        for f in fields(first):
            values = [getattr(it, f.name) for it in items]
            if values[0] is None or not isinstance(values[0], torch.Tensor):
                out[f.name] = values[0]
                continue
            if f.name == "context" and repeat_context:
                # repeating all tokens k times leaves cross-attention unchanged, so 77 and 154 tokens batch together
                length = math.lcm(*(v.shape[1] for v in values))
                values = [v.repeat(1, length // v.shape[1], 1) for v in values]
            out[f.name] = torch.cat([_to_batch(v, batch) for v in values])
        return ModelInputs(**out)


def _to_batch(value: torch.Tensor, batch: int) -> torch.Tensor:
    if value.shape[0] == batch:
        return value
    return value.repeat((batch // value.shape[0] or 1,) + (1,) * (value.ndim - 1))[:batch]


class ModelFamily:
    """One kind of diffusion model. Subclasses set the class attributes and override the methods they need."""

    name: ClassVar[str] = ""
    latent_format: ClassVar[LatentFormat]
    #: text encoders a full checkpoint of this family carries, as ``split_checkpoint`` names them
    text_encoders: ClassVar[tuple[str, ...]] = ()
    #: True when repeating every context token k times leaves the output unchanged (cross-attention)
    repeat_context: ClassVar[bool] = True

    def detect(self, parts: dict[str, dict[str, Any]]) -> bool:
        """True when the split checkpoint ``parts`` (``parts["unet"]``: the diffusion model) is this family's."""
        raise NotImplementedError

    def convert(self, sd: dict[str, Any], dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        """The state dict in the network's key names (identity when the file already uses them); ``dtype`` is the
        compute dtype, for weights stored in a form that must be expanded (scaled fp8)."""
        return sd

    def config(self, sd: dict[str, Any], parts: dict[str, dict[str, Any]]) -> Any:
        """The network's configuration, read off the converted tensor shapes."""
        raise NotImplementedError

    def compute_dtype(self, precision: Precision) -> torch.dtype:
        """The dtype the network runs in, of the device's `precision` (families that overflow in fp16 take bf16)."""
        return precision.unet

    def build(self, config: Any) -> nn.Module:
        """The network for ``config`` (called on the meta device)."""
        raise NotImplementedError

    def model_sampling(self, config: Any, full: dict[str, Any], parts: dict[str, dict[str, Any]]) -> Any:
        """ComfyUI's model_sampling object (sigma table, prediction type) for this model."""
        raise NotImplementedError

    def model_inputs(self, model: DiffusionModel, cond: torch.Tensor, options: dict[str, Any],
                     x: torch.Tensor) -> ModelInputs:
        """One CONDITIONING entry ``[cond, options]`` as model inputs for latents shaped like ``x``."""
        return ModelInputs(context=cond)

    def forward(self, network: nn.Module, x: torch.Tensor, t: torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
        """The network's raw output for ``x`` at timesteps ``t`` (eps, v or flow, per the model_sampling)."""
        raise NotImplementedError

    def describe(self, config: Any) -> str:
        """A short description of the model for its repr."""
        return ""

    def __repr__(self) -> str:
        return f"<model family {self.name}>"


def module_device(module: nn.Module) -> torch.device:
    """Where a module computes: its first weight's device, or the device a partial load (offload.stream) set."""
    return module.__dict__.get("_comfykit_device") or next(module.parameters()).device


def module_dtype(module: nn.Module) -> torch.dtype:
    """The compute dtype: the first floating parameter not stored in fp8 (fp8 weights are upcast per layer)."""
    from .fp8 import is_fp8

    return next((p.dtype for p in module.parameters() if p.is_floating_point() and not is_fp8(p)),
                next(module.parameters()).dtype)


class DiffusionModel:
    """A loaded diffusion model as the samplers see it: ``apply(x, t, inputs)`` -> raw output in float32.

    >>> inputs = model.model_inputs(cond, {"pooled_output": pooled}, x)
    >>> out = model.apply(x, model.model_sampling.timestep(sigma), inputs)
    """

    def __init__(self, network: nn.Module, family: ModelFamily, config: Any, model_sampling: Any, name: str = ""):
        self.network = network
        self.family = family
        self.config = config
        self.model_sampling = model_sampling
        self.name = name
        self.patches: dict[str, Any] = {}  # LoRA provenance, for repr and cache keys
        self.compiled: Any = None  # a comfykit.engine.compile.Compiler (Engine(compile=...)), shared by clones

    @property
    def arch(self) -> str:
        """The family's name ("sd1", "sd2", "sdxl", "sdxl_refiner", ...)."""
        return self.family.name

    @property
    def latent_format(self) -> LatentFormat:
        return self.family.latent_format

    @property
    def prediction(self) -> str:
        """"eps", "v" or "flow"."""
        return self.model_sampling.prediction

    @property
    def unet(self) -> nn.Module:
        """The network (named for the UNet families, whose LoRA code reads it)."""
        return self.network

    @unet.setter
    def unet(self, value: nn.Module) -> None:
        self.network = value

    @property
    def device(self) -> torch.device:
        """Where the weights are now."""
        return module_device(self.network)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype; inputs are cast to it."""
        return module_dtype(self.network)

    def model_inputs(self, cond: torch.Tensor, options: dict[str, Any], x: torch.Tensor) -> ModelInputs:
        """One CONDITIONING entry as this model's inputs (the family decides what it needs)."""
        return self.family.model_inputs(self, cond, options, x)

    def apply(self, x: torch.Tensor, t: torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
        """The raw network output (eps, v or flow) in float32; inputs are moved to the weights' device and dtype."""
        device, dtype = self.device, self.dtype
        t = torch.as_tensor(t, device=device).float().reshape(-1).expand(x.shape[0])
        moved = {f.name: _move(getattr(inputs, f.name), device, dtype) for f in fields(inputs)}
        network = self.network if self.compiled is None else self.compiled.bind(self.network)
        with torch.no_grad():  # not inference_mode: callers may update the outputs in place
            out = self.family.forward(network, x.to(device, dtype), t, ModelInputs(**moved))
        return out.float()

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                 y: torch.Tensor | None = None, **inputs: Any) -> torch.Tensor:
        """``apply`` with the inputs given by name (``y`` is the pooled vector)."""
        return self.apply(x, timesteps, ModelInputs(context=context, pooled=y, **inputs))

    def encode_adm(self, pooled: torch.Tensor | None, width: int, height: int, **sizes: Any) -> torch.Tensor | None:
        """SDXL's ``y`` vector (pooled text + size embeddings); None for families without one."""
        encode = getattr(self.family, "encode_adm", None)
        return None if encode is None else encode(self.config, pooled, width, height, **sizes)

    def clone(self) -> DiffusionModel:
        """A new wrapper sharing the same weights (patch it without touching the original)."""
        other = copy.copy(self)
        other.patches = dict(self.patches)
        return other

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> DiffusionModel:
        """Move the weights (in place, shared with clones; fp8-stored weights stay fp8) and return self."""
        from .fp8 import module_to

        module_to(self.network, device, dtype)
        return self

    def __repr__(self) -> str:
        detail = self.family.describe(self.config)
        return (f"DiffusionModel({self.arch}, {self.prediction}{', ' + detail if detail else ''}, {self.dtype}, "
                f"{self.device}{', lora' if self.patches else ''})")


def _move(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype if value.is_floating_point() else value.dtype)
    if isinstance(value, tuple):
        return tuple(_move(v, device, dtype) for v in value)
    return value


# -- extra input channels (inpaint, InstructPix2Pix, Fill ...): the part every family shares ----------------------
def resize_to_batch(value: torch.Tensor, batch: int) -> torch.Tensor:
    """``value`` with ``batch`` items, picking evenly spread items when the counts differ (ComfyUI's rule)."""
    have = value.shape[0]
    if have == batch:
        return value
    if batch <= 1:
        return value[:batch]
    if batch < have:
        scale = (have - 1) / (batch - 1)
        index = [min(round(i * scale), have - 1) for i in range(batch)]
    else:
        scale = have / batch
        index = [min(math.floor((i + 0.5) * scale), have - 1) for i in range(batch)]
    return value[index]


def concat_image(options: dict[str, Any], x: torch.Tensor, latent_format: LatentFormat | None = None,
                 fallback: bool = True) -> torch.Tensor | None:
    """The image latent a model concatenates to ``x`` (ComfyUI's ``concat_cond``), sized like ``x``, or None.

    The options' ``concat_latent_image`` (a raw VAE latent, taken to model space with ``latent_format`` when given)
    or, with ``fallback``, the run's ``latent_image`` (already in model space, as the denoiser passes it).
    """
    from ..images import common_upscale

    image = options.get("concat_latent_image")
    if image is not None:
        image = torch.as_tensor(image).to(x.device, torch.float32)
        if latent_format is not None:
            image = latent_format.process_in(image)
    elif fallback:
        image = options.get("latent_image")
    if image is None:
        return None
    if image.shape[1:] != x.shape[1:]:
        image = common_upscale(image.float(), x.shape[-1], x.shape[-2], "bilinear", "center")
    return resize_to_batch(image, x.shape[0])


def concat_mask(options: dict[str, Any], x: torch.Tensor) -> torch.Tensor | None:
    """The 0/1 mask [B, 1, h, w] a model concatenates to ``x``: ``concat_mask``, else the run's ``denoise_mask``."""
    from ..images import common_upscale

    mask = options.get("concat_mask", options.get("denoise_mask"))
    if mask is None:
        return None
    mask = torch.as_tensor(mask).to(x.device, torch.float32)
    if mask.ndim == x.ndim:
        mask = mask[:, :1]
    mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:]))
    if mask.shape[-2:] != x.shape[-2:]:
        mask = common_upscale(mask, x.shape[-1], x.shape[-2], "bilinear", "center")
    return resize_to_batch(mask.round(), x.shape[0])
