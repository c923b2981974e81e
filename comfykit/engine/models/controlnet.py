"""ControlNets: the files users download, the CONTROL_NET value the apply nodes chain, and its per-run residuals.

Network code is diffusers' ``ControlNetModel`` (SD1.x/SD2.x/SDXL) and ``SD3ControlNetModel`` (SD3/SD3.5); configs
are read off tensor shapes. Layouts read (``load_controlnet``):

- lllyasviel's original LDM ControlNets (``control_model.*`` keys, ``.pth`` or ``.safetensors``; also unprefixed),
  converted with diffusers' ``convert_controlnet_checkpoint``;
- diffusers-format SD1.5/SD2/SDXL ControlNets (single files, or a folder's ``diffusion_pytorch_model`` file);
- diffusers-format SD3/SD3.5 ControlNets (``SD3ControlNetModel``) and Stability's SD3.5 ControlNet files
  (canny, depth, blur; see ``controlnet_sd3``);
- FLUX.1 ControlNets (``FluxControlNetModel``): InstantX / Shakker-Labs Union-Pro and XLabs' (``controlnet_flux``);
- T2I-Adapters, TencentARC's and diffusers' layouts (diffusers' ``T2IAdapter``; see ``controlnet_t2i``);
- union ControlNets (ControlNet++ / ProMax, diffusers' ``ControlNetUnionModel``; see ``controlnet_union``);
- Stability's Control-LoRAs (``lora_controlnet``): built on the model's UNet when sampling (see ``control_lora``).

Semantics follow ComfyUI 0.3.64: an apply node puts a :class:`ControlNet` (hint image, strength, percent range,
the previously applied ControlNet) on each conditioning entry; at sampling time :meth:`ControlNet.start` makes a
:class:`ControlRun` chain whose residuals are summed with those of the ControlNets applied before it.

>>> cnet = load_controlnet("models/controlnet/control_v11p_sd15_canny.pth")
>>> applied = cnet.with_hint(image.movedim(-1, 1), strength=0.8, percent=(0.0, 0.6))
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from .dit_common import build_on_meta, config_from_folder, count_blocks, describe
from .family import module_device, module_dtype
from .precision import precision_for

#: ComfyUI's SetUnionControlNetType choices (index = the union model's control type; "auto" = none set)
UNION_TYPES = ("auto", "openpose", "depth", "hed/pidi/scribble/ted", "canny/lineart/anime_lineart/mlsd", "normal",
               "segment", "tile", "repaint")
LDM_PREFIX = "control_model."


# -- what a file is -----------------------------------------------------------------------------------------------
def detect_controlnet(sd: dict[str, Any]) -> str:
    """The layout of a ControlNet state dict: "ldm", "diffusers", "union", "t2i", "control-lora", "sd3-diffusers",
    "sd3-sai", "flux-instantx" or "flux-xlabs"; else a ModelError saying what the file looks like."""
    if "lora_controlnet" in sd:
        return "control-lora"
    if "task_embedding" in sd or "control_add_embedding.linear_1.weight" in sd:
        return "union"
    if any(k in sd for k in (LDM_PREFIX + "zero_convs.0.0.weight", "zero_convs.0.0.weight")):
        return "ldm"
    if "controlnet_cond_embedding.conv_in.weight" in sd:
        return "diffusers"
    if "controlnet_blocks.0.weight" in sd and "pos_embed_input.proj.weight" in sd:
        return "sd3-sai" if "transformer_blocks.0.adaLN_modulation.1.bias" in sd else "sd3-diffusers"
    from .controlnet_flux import flux_controlnet_layout

    flux = flux_controlnet_layout(sd)
    if flux is not None:
        return flux
    from .controlnet_t2i import is_t2i_adapter

    if is_t2i_adapter(sd):
        return "t2i"
    raise ModelError(f"not a ControlNet: {_looks_like(sd)}; put ControlNet files (control_*.pth / .safetensors, "
                     "diffusers controlnet folders) in models/controlnet")


def _looks_like(sd: dict[str, Any]) -> str:
    names = list(sd)
    if any(k.startswith("model.diffusion_model.") for k in names):
        return "this is a full checkpoint (put it in models/checkpoints)"
    if any(k.startswith(("input_blocks.", "down_blocks.")) for k in names):
        return "this is a UNet without ControlNet parts (models/diffusion_models)"
    return "this looks like " + describe(sd)


# -- SD1/SD2/SDXL: diffusers ControlNetModel ---------------------------------------------------------------------
def _ldm_layers_per_block(sd: dict[str, Any]) -> int:
    inputs = count_blocks(sd, "input_blocks")
    downs = sum(1 for i in range(inputs) if f"input_blocks.{i}.0.op.weight" in sd)
    return (inputs - 1 - downs) // (downs + 1)


def ldm_to_diffusers(sd: dict[str, Any]) -> dict[str, Any]:
    """An LDM ControlNet (``control_model.`` removed) in diffusers' ``ControlNetModel`` key names."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    out = convert_controlnet_checkpoint(sd, {"layers_per_block": _ldm_layers_per_block(sd)})
    # SDXL's adm embedding: diffusers' converter leaves label_emb behind
    for ldm, dif in (("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2")):
        for kind in ("weight", "bias"):
            if f"{ldm}.{kind}" in sd:
                out[f"{dif}.{kind}"] = sd[f"{ldm}.{kind}"]
    return {k: v for k, v in out.items() if v is not None}


def infer_controlnet_config(sd: dict[str, Any]) -> dict[str, Any]:
    """``ControlNetModel`` kwargs from diffusers-layout tensor shapes.

    Heads: SD1.x ControlNets (1x1-conv transformer projections) have 8 heads; SD2.x/SDXL ones (linear
    projections) 64-wide heads, as their UNets (the head count leaves no trace in the shapes).
    """
    levels = count_blocks(sd, "down_blocks")
    channels = [sd[f"down_blocks.{i}.resnets.0.conv2.weight"].shape[0] for i in range(levels)]
    depths = [count_blocks(sd, f"down_blocks.{i}.attentions.0.transformer_blocks") for i in range(levels)]
    proj = next((v for k, v in sd.items() if k.endswith("proj_in.weight")), None)
    linear = proj is not None and proj.ndim == 2
    context = next((v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight")), 768)
    heads = [c // min(64, c) for c in channels] if linear else 8
    embed = [sd["controlnet_cond_embedding.conv_in.weight"].shape[0]] + [
        sd[f"controlnet_cond_embedding.blocks.{2 * i + 1}.weight"].shape[0]
        for i in range(count_blocks(sd, "controlnet_cond_embedding.blocks") // 2)]
    mid_depth = count_blocks(sd, "mid_block.attentions.0.transformer_blocks")
    config: dict[str, Any] = dict(
        in_channels=sd["conv_in.weight"].shape[1],
        conditioning_channels=sd["controlnet_cond_embedding.conv_in.weight"].shape[1],
        block_out_channels=tuple(channels), layers_per_block=count_blocks(sd, "down_blocks.0.resnets"),
        down_block_types=tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths),
        mid_block_type="UNetMidBlock2DCrossAttn" if mid_depth else "UNetMidBlock2D",
        transformer_layers_per_block=tuple(max(1, d) for d in depths[:-1]) + (max(1, depths[-1], mid_depth),),
        cross_attention_dim=context, attention_head_dim=heads, use_linear_projection=linear,
        conditioning_embedding_out_channels=tuple(embed), norm_num_groups=32)
    if "add_embedding.linear_1.weight" in sd:
        config.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=sd["add_embedding.linear_1.weight"].shape[1])
    return config


class UNetControlNet(nn.Module):
    """A diffusers ``ControlNetModel`` giving ComfyUI's residual lists for the LDM UNet (see :meth:`residuals`)."""

    kind = "unet"

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @property
    def context_dim(self) -> int:
        """The text width its cross-attention reads (768 SD1.5, 1024 SD2, 2048 SDXL)."""
        return self.net.config.cross_attention_dim

    @property
    def adm_channels(self) -> int | None:
        """SDXL's adm vector width, None for SD1/SD2 ControlNets."""
        return self.net.config.projection_class_embeddings_input_dim

    def describe(self) -> str:
        """What family it is for, as far as the shapes say."""
        if self.adm_channels:
            return f"an SDXL ControlNet (context width {self.context_dim}, adm vector)"
        what = "an SD2.x" if self.net.config.use_linear_projection else "an SD1.x"
        return f"{what} ControlNet (context width {self.context_dim})"

    def check(self, model: Any, name: str) -> None:
        """ModelError unless this ControlNet fits the UNet of ``model`` (a DiffusionModel)."""
        cfg = model.config
        mc = getattr(cfg, "model_channels", None)
        ok = mc is not None and (
            cfg.context_dim == self.context_dim and bool(cfg.adm_in_channels) == bool(self.adm_channels)
            and tuple(mc * m for m in cfg.channel_mult) == tuple(self.net.config.block_out_channels))
        if not ok:
            raise ModelError(f"{name}: this is {self.describe()} but the model is {model.arch} "
                             f"({_model_summary(model)}); use a ControlNet made for {model.arch}")

    def hint_ratio(self, vae: Any) -> int:
        """Hint pixels per latent pixel: the hint is an image at the decoded size."""
        return 8

    def prepare_hint(self, hint: torch.Tensor, control: Any, model: Any) -> torch.Tensor:
        """The resized hint as the network takes it (pixels in 0..1, unchanged)."""
        return hint

    def residuals(self, x: torch.Tensor, t: torch.Tensor, hint: torch.Tensor, context: torch.Tensor,
                  y: torch.Tensor | None) -> dict[str, list[torch.Tensor]]:
        """{"output": one residual per UNet input block, in order, "middle": [the middle block's]}.

        diffusers' ``ControlNetModel.forward`` with SDXL's adm vector ``y`` taken as it is (the LDM UNet's ``y``:
        pooled text then the embedded size numbers, the concatenation diffusers' ``text_time`` embedding makes).
        """
        dtype = self.net.conv_in.weight.dtype
        emb = self.embed(x, t, y)
        return self.trunk(x, emb, self.net.controlnet_cond_embedding(hint.to(dtype)), context)

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The timestep embedding, plus SDXL's adm embedding of ``y``."""
        net = self.net
        dtype = net.conv_in.weight.dtype
        emb = net.time_embedding(net.time_proj(t.reshape(-1).expand(x.shape[0])).to(dtype))
        if net.config.addition_embed_type == "text_time":
            if y is None:
                raise ValueError("this SDXL ControlNet needs the model's adm vector y")
            emb = emb + net.add_embedding(y.to(dtype))
        return emb

    def trunk(self, x: torch.Tensor, emb: torch.Tensor, guided_hint: torch.Tensor, context: torch.Tensor
              ) -> dict[str, list[torch.Tensor]]:
        """The encoder copy run on ``x`` plus the embedded hint: the zero-conv outputs as :meth:`residuals`."""
        net = self.net
        dtype = net.conv_in.weight.dtype
        context = context.to(dtype)
        h = net.conv_in(x.to(dtype)) + guided_hint
        skips = [h]
        for block in net.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
            else:
                h, res = block(hidden_states=h, temb=emb)
            skips += list(res)
        if getattr(net.mid_block, "has_cross_attention", False):
            h = net.mid_block(h, emb, encoder_hidden_states=context)
        else:
            h = net.mid_block(h, emb)
        outs = [zero(s) for zero, s in zip(net.controlnet_down_blocks, skips)]
        return {"output": outs, "middle": [net.controlnet_mid_block(h)]}


def _model_summary(model: Any) -> str:
    cfg = model.config
    if hasattr(cfg, "context_dim"):
        return f"context width {cfg.context_dim}{', adm vector' if cfg.adm_in_channels else ''}"
    return model.family.describe(cfg) if hasattr(model, "family") else repr(model)


def build_unet_controlnet(sd: dict[str, Any], name: str, folder_config: dict[str, Any] | None = None
                          ) -> UNetControlNet:
    """A :class:`UNetControlNet` from a diffusers-layout state dict (ModelError when the shapes do not fit)."""
    from diffusers import ControlNetModel

    try:
        config = infer_controlnet_config(sd)
    except (KeyError, IndexError) as e:
        raise ModelError(f"{name}: the ControlNet weights are incomplete (missing {e}); re-download the file"
                         ) from None
    # a folder's config.json knows the head count
    config = config_from_folder(config, folder_config, ("attention_head_dim", "num_attention_heads"))
    return UNetControlNet(build_on_meta(lambda: ControlNetModel(**config), sd, "ControlNet", name))


# -- reading files ------------------------------------------------------------------------------------------------
def read_controlnet_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, diffusers config.json or {}) of a ControlNet file or diffusers ControlNet folder."""
    import json

    from .checkpoint import read_state_dict

    path = Path(path)
    folder = path if path.is_dir() else None
    if folder is not None:
        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        if not files:
            raise ModelError(f"{folder}: no .safetensors or .bin weights in this ControlNet folder")
        sd: dict[str, Any] = {}
        for f in files:
            sd.update(read_state_dict(f))
    else:
        sd = read_state_dict(path)
        folder = path.parent
    cfg_file = folder / "config.json"
    # a config.json beside a file counts only for diffusers' own weight file names
    own = path.is_dir() or path.name.startswith("diffusion_pytorch_model")
    config = json.loads(cfg_file.read_text()) if own and cfg_file.is_file() else {}
    return sd, config


def load_controlnet(source: str | Path | dict[str, Any], *, device: Any = None, dtype: torch.dtype | None = None,
                    name: str | None = None, model: Any = None, load_device: Any = None) -> ControlNet:
    """The CONTROL_NET a ControlNet file, diffusers ControlNet folder or state dict holds (no hint applied yet).

    ``model`` (DiffControlNetLoader): the UNet a "diff" ControlNet (a ``difference`` key: weights stored as the
    difference to its base model) is added to. The weights are stored in the dtype the diffusion models of its
    family run in on `device` (``precision.precision_for``; `dtype` overrides it) and go to `load_device`
    (default `device`).
    """
    if isinstance(source, dict):
        sd, folder_config, label = dict(source), {}, name or "state dict"
    else:
        sd, folder_config = read_controlnet_file(source)
        label = name or str(source)
    if "difference" in sd:
        sd = _add_base(sd, model, label)
    try:
        layout = detect_controlnet(sd)
    except ModelError as e:
        raise ModelError(f"{label}: {e}") from None
    if layout in ("sd3-diffusers", "sd3-sai"):
        from .controlnet_sd3 import build_sd3_controlnet

        network: nn.Module = build_sd3_controlnet(sd, layout, label, folder_config)
    elif layout.startswith("flux"):
        from .controlnet_flux import build_flux_controlnet

        network = build_flux_controlnet(sd, layout, label, folder_config)
    elif layout == "t2i":
        from .controlnet_t2i import build_t2i_adapter

        network = build_t2i_adapter(sd, label, folder_config)
    elif layout == "union":
        from .controlnet_union import build_union_controlnet

        network = build_union_controlnet(sd, label, folder_config)
    elif layout == "control-lora":
        from .control_lora import ControlLora

        network = ControlLora(sd, label)
    else:
        if layout == "ldm":
            prefixed = any(k.startswith(LDM_PREFIX) for k in sd)
            if prefixed:
                sd = {k[len(LDM_PREFIX):]: v for k, v in sd.items() if k.startswith(LDM_PREFIX)}
            sd = ldm_to_diffusers(sd)
        network = build_unet_controlnet(sd, label, folder_config)
    precision = precision_for(torch.device(device or "cpu"), dtype)
    dtype = precision.dit if layout.startswith("flux") else precision.unet
    network = nn.Module.to(network, device=torch.device(load_device or device or "cpu"), dtype=dtype)
    # ComfyUI's rule: "shuffle" ControlNets average each residual over the image
    stem = Path(label).stem if not isinstance(source, dict) else ""
    pooling = stem.endswith(("_shuffle", "_shuffle_fp16")) or bool(folder_config.get("global_pool_conditions"))
    pooling = pooling and layout not in ("t2i", "control-lora")  # ComfyUI pools only ControlNets proper
    return ControlNet(ControlModel(network, Path(label).name, pooling))


def _add_base(sd: dict[str, Any], model: Any, label: str) -> dict[str, Any]:
    """A diff ControlNet's weights plus the matching UNet weights of ``model`` (ComfyUI's DiffControlNetLoader)."""
    if model is None or not hasattr(model.network, "input_blocks"):
        raise ModelError(f"{label}: a diff ControlNet (weights stored as differences to an SD model); load it "
                         "with DiffControlNetLoader and connect the checkpoint's MODEL")
    base = model.network.state_dict()
    out = {}
    for key, value in sd.items():
        if key == "difference":
            continue
        inner = key[len(LDM_PREFIX):] if key.startswith(LDM_PREFIX) else key
        if inner in base and value.is_floating_point():
            value = value + base[inner].to(value.device, value.dtype)
        out[key] = value
    return out


def control_models(*conditionings: list | None) -> list[Any]:
    """The ControlNet networks the conditionings apply and the VAEs that encode their hints (FLUX.1/SD3.5), each
    once: what goes on the device with the diffusion model."""
    found: dict[int, Any] = {}
    for conditioning in conditionings:
        for _, options in conditioning or ():
            if options.get("control") is not None:
                for c in options["control"].chain():
                    found.update((id(m), m) for m in (c.model, c.vae) if m is not None)
    return list(found.values())


# -- the CONTROL_NET value and its per-run chain ----------------------------------------------------------------
class ControlModel:
    """A loaded ControlNet network, shared by every CONTROL_NET made from it (the engine moves it like a model)."""

    def __init__(self, network: nn.Module, name: str = "", global_average_pooling: bool = False):
        self.network = network
        self.name = name
        self.global_average_pooling = global_average_pooling

    @property
    def device(self) -> torch.device:
        """Where the weights are now."""
        return module_device(self.network)

    @property
    def dtype(self) -> torch.dtype:
        """The weight dtype."""
        return module_dtype(self.network)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> ControlModel:
        """Move the weights in place and return self."""
        nn.Module.to(self.network, device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        return f"ControlModel({self.name!r}, {self.network.describe()}, {self.dtype}, {self.device})"


@dataclass(frozen=True, eq=False)
class ControlNet:
    """ComfyUI's CONTROL_NET: a network and, once applied, its hint, strength, percent range and the ControlNet
    applied before it on the same conditioning. Immutable: each apply makes a new one, so cached outputs stay put."""

    model: ControlModel
    hint: torch.Tensor | None = None  # [B, C, H, W] images in 0..1, any size
    strength: float = 1.0
    percent: tuple[float, float] = (0.0, 1.0)
    vae: Any = None
    previous: ControlNet | None = None
    union_type: int | None = None

    def with_hint(self, hint: torch.Tensor, strength: float = 1.0, percent: tuple[float, float] = (0.0, 1.0),
                  vae: Any = None, previous: ControlNet | None = None) -> ControlNet:
        """A copy applied with ``hint`` ([B, C, H, W] 0..1) on top of ``previous`` (ComfyUI's set_cond_hint)."""
        return replace(self, hint=hint, strength=float(strength), percent=(float(percent[0]), float(percent[1])),
                       vae=vae, previous=previous)

    def with_union_type(self, union_type: int | None) -> ControlNet:
        """A copy with a union ControlNet's control type set (None: auto)."""
        return replace(self, union_type=union_type)

    def chain(self) -> list[ControlNet]:
        """This ControlNet and those applied before it, the earliest first."""
        out, c = [], self
        while c is not None:
            out.append(c)
            c = c.previous
        return out[::-1]

    def models(self) -> list[ControlModel]:
        """The networks the chain runs (for placing them on the device)."""
        return [c.model for c in self.chain()]

    @property
    def device(self) -> torch.device:
        """Where the network's weights are (the engine moves loaded models)."""
        return self.model.device

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> ControlNet:
        """Move the network's weights in place and return self."""
        self.model.to(device, dtype)
        return self

    def start(self, model: Any, model_sampling: Any) -> ControlRun:
        """The per-run residual function of the chain for ``model`` (checks each ControlNet fits it)."""
        previous = self.previous.start(model, model_sampling) if self.previous is not None else None
        return ControlRun(self, model, model_sampling, previous)

    def __repr__(self) -> str:
        applied = "" if self.hint is None else f", strength={self.strength}, percent={self.percent}"
        stacked = f", after {len(self.chain()) - 1}" if self.previous is not None else ""
        return f"ControlNet({self.model.name!r}{applied}{stacked})"


def broadcast_hint(hint: torch.Tensor, batch: int, calls: int) -> torch.Tensor:
    """The hint for a model call of ``batch`` items made of ``calls`` conds (ComfyUI's broadcast_image_to)."""
    if hint.shape[0] == 1 or hint.shape[0] == batch:
        return hint
    per_call = batch // calls
    hint = hint[:per_call]
    if per_call > hint.shape[0]:
        reps = per_call // hint.shape[0]
        hint = torch.cat([hint] * reps + [hint[:per_call % hint.shape[0]]])
    return hint if hint.shape[0] == batch else torch.cat([hint] * calls)


class ControlRun:
    """One ControlNet of a chain during one sampling run: ``__call__(x, t, inputs, sigma, calls)`` -> residuals."""

    def __init__(self, control: ControlNet, model: Any, model_sampling: Any, previous: ControlRun | None):
        if control.hint is None:
            raise ValueError(f"ControlNet {control.model.name!r} has no hint image; apply it with ControlNetApply")
        control.model.network.check(model, control.model.name)
        if hasattr(control.model.network, "check_type"):  # a union ControlNet: does the file have this type?
            control.model.network.check_type(control.union_type, control.model.name)
        self.control, self.model, self.previous = control, model, previous
        start, end = control.percent
        self.sigma_range = (model_sampling.percent_to_sigma(start), model_sampling.percent_to_sigma(end))
        self._hints: dict[tuple, Any] = {}  # resized hints, and T2I-Adapter features per hint

    def _hint(self, x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        from ..images import common_upscale

        net = self.control.model.network
        key = (tuple(x.shape[-2:]), str(device), dtype)
        if key not in self._hints:
            ratio = net.hint_ratio(self.control.vae)
            width, height = x.shape[-1] * ratio, x.shape[-2] * ratio
            if hasattr(net, "hint_size"):  # T2I-Adapters round up to their pixel-unshuffle factor
                width, height = net.hint_size(width, height)
            hint = common_upscale(self.control.hint.float().cpu(), width, height, "nearest-exact", "center")
            self._hints[key] = net.prepare_hint(hint, self.control, self.model).to(device, dtype)
        return self._hints[key]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, inputs: Any, sigma: torch.Tensor,
                 calls: int = 1) -> dict[str, list[torch.Tensor | None]] | None:
        """Residuals of the chain for model input ``x`` at timestep ``t`` (noise level ``sigma``), or None."""
        prev = self.previous(x, t, inputs, sigma, calls) if self.previous is not None else None
        s = float(sigma.reshape(-1)[0])
        if s > self.sigma_range[0] or s < self.sigma_range[1]:
            return prev
        cmodel = self.control.model
        if cmodel.device != x.device or cmodel.dtype != x.dtype:
            cmodel.to(x.device, x.dtype)  # x comes in the diffusion model's device and compute dtype
        net = cmodel.network
        hint = broadcast_hint(self._hint(x, cmodel.device, cmodel.dtype), x.shape[0], calls)
        extra = net.run_options(self.control, inputs) if hasattr(net, "run_options") else {}
        with torch.no_grad():
            if hasattr(net, "features"):  # T2I-Adapters see the hint alone: ComfyUI runs them once per hint
                key = ("features", tuple(hint.shape), str(hint.device), hint.dtype)
                if key not in self._hints:
                    self._hints[key] = net.features(hint, self.model)
                out = self._hints[key]
            else:
                out = net.residuals(x, t, hint, inputs.context, inputs.pooled, **extra)
        merged: dict[str, list[torch.Tensor | None]] = {}
        for key, values in out.items():
            scaled, done = [], {}
            for v in values:
                if v is not None and id(v) not in done:  # a residual shared by blocks (FLUX.1) is scaled once
                    w = v
                    if cmodel.global_average_pooling:
                        w = w.mean(dim=(2, 3), keepdim=True).expand_as(w)
                    done[id(v)] = (w * self.control.strength).to(x.dtype)
                scaled.append(None if v is None else done[id(v)])
            merged[key] = scaled
        return merge_residuals(merged, prev)


def merge_residuals(out: dict[str, list], prev: dict[str, list] | None) -> dict[str, list]:
    """Stacked ControlNets: residual lists summed item by item; a longer or missing list is kept (ComfyUI's rule)."""
    if prev is None:
        return out
    merged = {k: list(v) for k, v in out.items()}
    for key, values in prev.items():
        mine = merged.setdefault(key, [])
        for i, p in enumerate(values):
            if i >= len(mine):
                mine.append(p)
            elif p is not None:
                mine[i] = p if mine[i] is None else p + mine[i]
    return merged

