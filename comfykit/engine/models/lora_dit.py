"""FLUX.1 and SD3/SD3.5 LoRAs onto clones: kohya, original (BFL / Stability: ComfyUI's), PEFT/diffusers and XLabs
names, and BFL's Canny/Depth control LoRAs.

Every layout is read into one form: per target parameter of the diffusers transformer, a list of weight patches.
Original-named layers map to diffusers modules by the row splits diffusers' checkpoint converters use (fused qkv ->
q, k, v; a FLUX single block's linear1 -> q, k, v, mlp; final/last-context adaLN shift/scale halves swapped).
diffusers' kohya and BFL-control LoRA converters are not called: they hard-code the released model's 19/38 blocks
and 3072 width, so they fail on any other size (and on the tiny test models); the table is checked against diffusers'
weight converter in tests (tests/engine/test_flux_lora.py). Its XLabs converter reads the sizes off the file: used.

Patch kinds, as ComfyUI applies them: "lora" (up @ down x alpha/rank x strength), "diff" (a full delta x strength,
also `lora_B.bias` as a bias delta), "set" (a replacement weight, strength ignored: BFL control LoRAs' q/k norm
scales), "reshape" (zero-pad the weight to a wider shape first: a control LoRA's 128-channel `img_in`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from . import keys
from .diffusion import DiffusionModel, shared_copy
from .fp8 import FP8_DTYPES
from .lora import _TEXT_ENCODER_PREFIXES

#: prefixes in front of BFL-named layers, and in front of diffusers-named ones
_BFL_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "lora_unet_")
_DIFFUSERS_PREFIXES = ("transformer.base_model.model.", "base_model.model.", "transformer.", "lora_transformer_")

# (target, rows) where rows is (start, stop) of the BFL layer's output, or "swap" for the adaLN halves
Target = tuple[str, Any]


def _sizes(transformer: nn.Module) -> tuple[int, int, int, int]:
    blocks, singles = len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)
    inner = transformer.x_embedder.out_features
    mlp = transformer.single_transformer_blocks[0].proj_mlp.out_features if singles else 4 * inner
    return blocks, singles, inner, mlp


def bfl_to_diffusers_modules(transformer: nn.Module) -> dict[str, list[Target]]:
    """BFL layer name -> [(diffusers module, output rows)] for a diffusers FLUX.1 transformer of any size."""
    blocks, singles, inner, mlp = _sizes(transformer)
    t = "time_text_embed."
    out: dict[str, list[Target]] = {
        "img_in": [("x_embedder", None)], "txt_in": [("context_embedder", None)],
        "time_in.in_layer": [(t + "timestep_embedder.linear_1", None)],
        "time_in.out_layer": [(t + "timestep_embedder.linear_2", None)],
        "vector_in.in_layer": [(t + "text_embedder.linear_1", None)],
        "vector_in.out_layer": [(t + "text_embedder.linear_2", None)],
        "guidance_in.in_layer": [(t + "guidance_embedder.linear_1", None)],
        "guidance_in.out_layer": [(t + "guidance_embedder.linear_2", None)],
        "final_layer.linear": [("proj_out", None)],
        "final_layer.adaLN_modulation.1": [("norm_out.linear", "swap")],  # BFL: shift, scale; diffusers: scale, shift
    }
    thirds = [(0, inner), (inner, 2 * inner), (2 * inner, 3 * inner)]
    for i in range(blocks):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        out |= {b + "img_mod.lin": [(d + "norm1.linear", None)], b + "txt_mod.lin": [(d + "norm1_context.linear", None)],
                b + "img_attn.qkv": [(d + f"attn.to_{x}", r) for x, r in zip("qkv", thirds)],
                b + "txt_attn.qkv": [(d + f"attn.add_{x}_proj", r) for x, r in zip("qkv", thirds)],
                b + "img_attn.proj": [(d + "attn.to_out.0", None)], b + "txt_attn.proj": [(d + "attn.to_add_out", None)],
                b + "img_mlp.0": [(d + "ff.net.0.proj", None)], b + "img_mlp.2": [(d + "ff.net.2", None)],
                b + "txt_mlp.0": [(d + "ff_context.net.0.proj", None)], b + "txt_mlp.2": [(d + "ff_context.net.2", None)],
                b + "img_attn.norm.query_norm": [(d + "attn.norm_q", None)],
                b + "img_attn.norm.key_norm": [(d + "attn.norm_k", None)],
                b + "txt_attn.norm.query_norm": [(d + "attn.norm_added_q", None)],
                b + "txt_attn.norm.key_norm": [(d + "attn.norm_added_k", None)]}
    for i in range(singles):
        b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        out |= {b + "linear1": [(d + "attn.to_q", thirds[0]), (d + "attn.to_k", thirds[1]),
                                (d + "attn.to_v", thirds[2]), (d + "proj_mlp", (3 * inner, 3 * inner + mlp))],
                b + "linear2": [(d + "proj_out", None)], b + "modulation.lin": [(d + "norm.linear", None)],
                b + "norm.query_norm": [(d + "attn.norm_q", None)], b + "norm.key_norm": [(d + "attn.norm_k", None)]}
    return out


def sai_to_diffusers_modules(transformer: nn.Module) -> dict[str, list[Target]]:
    """Stability's MMDiT layer name -> [(diffusers module, output rows)] for a diffusers SD3/SD3.5 transformer."""
    inner = transformer.pos_embed.proj.out_channels
    thirds = [(0, inner), (inner, 2 * inner), (2 * inner, 3 * inner)]
    t = "time_text_embed."
    out: dict[str, list[Target]] = {
        "x_embedder.proj": [("pos_embed.proj", None)], "context_embedder": [("context_embedder", None)],
        "t_embedder.mlp.0": [(t + "timestep_embedder.linear_1", None)],
        "t_embedder.mlp.2": [(t + "timestep_embedder.linear_2", None)],
        "y_embedder.mlp.0": [(t + "text_embedder.linear_1", None)],
        "y_embedder.mlp.2": [(t + "text_embedder.linear_2", None)],
        "final_layer.linear": [("proj_out", None)], "final_layer.adaLN_modulation.1": [("norm_out.linear", "swap")],
    }
    blocks = len(transformer.transformer_blocks)
    for i in range(blocks):
        d, x, c = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        out |= {x + "attn.qkv": [(d + f"attn.to_{q}", r) for q, r in zip("qkv", thirds)],
                c + "attn.qkv": [(d + f"attn.add_{q}_proj", r) for q, r in zip("qkv", thirds)],
                x + "attn.proj": [(d + "attn.to_out.0", None)], c + "attn.proj": [(d + "attn.to_add_out", None)],
                x + "attn2.qkv": [(d + f"attn2.to_{q}", r) for q, r in zip("qkv", thirds)],
                x + "attn2.proj": [(d + "attn2.to_out.0", None)],
                x + "mlp.fc1": [(d + "ff.net.0.proj", None)], x + "mlp.fc2": [(d + "ff.net.2", None)],
                c + "mlp.fc1": [(d + "ff_context.net.0.proj", None)], c + "mlp.fc2": [(d + "ff_context.net.2", None)],
                x + "adaLN_modulation.1": [(d + "norm1.linear", None)],
                # the last block's context stream only feeds attention: its adaLN is the (shift, scale) kind
                c + "adaLN_modulation.1": [(d + "norm1_context.linear", "swap" if i == blocks - 1 else None)],
                x + "attn.ln_q": [(d + "attn.norm_q", None)], x + "attn.ln_k": [(d + "attn.norm_k", None)],
                c + "attn.ln_q": [(d + "attn.norm_added_q", None)], c + "attn.ln_k": [(d + "attn.norm_added_k", None)],
                x + "attn2.ln_q": [(d + "attn2.norm_q", None)], x + "attn2.ln_k": [(d + "attn2.norm_k", None)]}
    present = {p for p, _ in transformer.named_modules()}
    return {k: v for k, v in out.items() if all(m in present for m, _ in v)}


def original_to_diffusers_modules(transformer: nn.Module) -> dict[str, list[Target]]:
    """The original (BFL or Stability) layer names of a FLUX.1 or SD3 diffusers transformer -> its modules."""
    if hasattr(transformer, "single_transformer_blocks"):
        return bfl_to_diffusers_modules(transformer)
    return sai_to_diffusers_modules(transformer)


def _parse(key: str) -> tuple[str, str] | None:
    """A file key -> (layer name with its prefix, patch part); None for keys of no known kind."""
    parsed = keys.lora_base_name(key)
    if parsed is not None:
        return parsed
    for suffix, part in ((".lora_B.bias", "diff_b"), (".lora_up.bias", "diff_b"), (".diff_b", "diff_b"),
                         (".diff", "diff"), (".reshape_weight", "reshape"), (".scale.set_weight", "set"),
                         (".weight.set_weight", "set"), (".set_weight", "set"), ("_norm.scale", "set")):
        if key.endswith(suffix):
            base = key[: -len(suffix)]
            return (base + "_norm" if suffix == "_norm.scale" else base), part
    return None


class _Names:
    """Resolves a file's layer names (BFL or diffusers, dotted or kohya-underscored, any prefix) to targets."""

    def __init__(self, transformer: nn.Module):
        self.bfl = original_to_diffusers_modules(transformer)
        self.bfl_flat = {k.replace(".", "_"): k for k in self.bfl}
        modules = [p for p, m in transformer.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) or p.endswith(
            ("norm_q", "norm_k", "norm_added_q", "norm_added_k"))]
        self.dif = set(modules)
        self.dif_flat = {p.replace(".", "_"): p for p in modules}

    def resolve(self, name: str) -> list[Target] | None:
        for prefix in ("", *_BFL_PREFIXES):
            if name.startswith(prefix):
                rest = name[len(prefix):]
                found = self.bfl.get(rest) or self.bfl.get(self.bfl_flat.get(rest, ""))
                if found:
                    return found
        for prefix in ("", *_DIFFUSERS_PREFIXES):
            if name.startswith(prefix):
                rest = name[len(prefix):]
                rest = rest if rest in self.dif else self.dif_flat.get(rest, "")
                if rest:
                    return [(rest, None)]
        return None


def _rows(t: torch.Tensor, rows: Any) -> torch.Tensor:
    if rows is None:
        return t
    if rows == "swap":
        shift, scale = t.chunk(2, dim=0)
        return torch.cat([scale, shift], dim=0)
    return t[rows[0]:rows[1]]


def read_dit_lora(path: Path, transformer: nn.Module) -> tuple[dict[str, list], list[str], int]:
    """(diffusers parameter -> [(kind, tensor-or-parts, rows)], unmatched names, number of layers in the file)."""
    from .checkpoint import read_state_dict

    sd = read_state_dict(path)
    if any(".processor.qkv_lora" in k or ".processor.proj_lora" in k for k in sd):
        # XLabs' names; diffusers' converter for them splits the fused qkv by the file's own sizes
        from diffusers.loaders.lora_conversion_utils import _convert_xlabs_flux_lora_to_diffusers

        try:
            sd = _convert_xlabs_flux_lora_to_diffusers(dict(sd))
        except (ValueError, KeyError, AttributeError) as e:
            raise ModelError(f"{path}: an XLabs-style FLUX.1 LoRA with keys this loader cannot read ({e})") from None
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unmatched: list[str] = []
    for key, value in sd.items():
        parsed = _parse(key)
        if parsed is None:
            unmatched.append(key)
        else:
            groups.setdefault(parsed[0], {})[parsed[1]] = value
    names = _Names(transformer)
    patches: dict[str, list] = {}
    for name, parts in groups.items():
        targets = names.resolve(name)
        if targets is None:
            if not name.startswith(_TEXT_ENCODER_PREFIXES):
                unmatched.append(name)
            continue
        if "down" in parts and "up" in parts:
            for module, rows in targets:
                patches.setdefault(module + ".weight", []).append(("lora", parts, rows))
        for kind in ("diff", "set", "reshape"):
            if kind in parts:
                for module, rows in targets:
                    patches.setdefault(module + ".weight", []).append((kind, parts[kind], rows))
        if "diff_b" in parts:
            for module, rows in targets:
                patches.setdefault(module + ".bias", []).append(("diff", parts["diff_b"], rows))
    return patches, unmatched, len(groups)


def _lora_delta(parts: dict[str, torch.Tensor], rows: Any, strength: float, device: torch.device) -> torch.Tensor:
    down, up = parts["down"].to(device, torch.float32), parts["up"].to(device, torch.float32)
    scale = float(parts["alpha"]) / down.shape[0] if "alpha" in parts else 1.0
    return _rows(up.flatten(1), rows) @ down.flatten(1) * (scale * strength)


def _store(module: nn.Module, name: str, value: torch.Tensor, like: torch.Tensor) -> None:
    """Set the clone's parameter: fp8 weights go back to fp8 with the layer's scale (half the memory of bf16)."""
    if like.dtype in FP8_DTYPES:
        scale = getattr(module, "scale_weight", None) if name == "weight" else None
        if scale is not None:
            value = value / scale.to(value)
        limit = torch.finfo(like.dtype).max
        value = value.clamp(-limit, limit)
    # the same shape keeps the base weight's layout (channels-last or not); a widened x_embedder gets a new one
    new = (torch.empty_like(like) if value.shape == like.shape
           else torch.empty(value.shape, dtype=like.dtype, device=like.device))
    setattr(module, name, nn.Parameter(new.copy_(value), requires_grad=False))


def _current(module: nn.Module, name: str, like: torch.Tensor) -> torch.Tensor:
    w = like.detach().float()
    scale = getattr(module, "scale_weight", None) if name == "weight" else None
    return w * scale.to(w) if scale is not None else w


def patch_dit(network: nn.Module, patches: dict[str, list], strength: float, path: Path) -> nn.Module:
    """A shared copy of a FluxModel/SD3Model `network` with the patches applied (a control LoRA widens its
    transformer's in_channels, in the copy's config)."""
    new = shared_copy(network)
    transformer = new.transformer
    in_channels = transformer.config.in_channels
    for param, entries in patches.items():
        module_path, _, name = param.rpartition(".")
        module = transformer.get_submodule(module_path)
        base = getattr(module, name, None)
        if base is None:
            continue  # a bias delta for a layer without bias
        w = _current(module, name, base)
        for kind, value, _ in entries:
            if kind == "reshape":
                shape = [int(s) for s in value.tolist()]
                if len(shape) != w.ndim or any(s < c for s, c in zip(shape, w.shape)):
                    raise ModelError(f"{path}: reshape_weight {shape} for {param} cannot hold its {tuple(w.shape)}")
                wide = torch.zeros(shape, dtype=w.dtype, device=w.device)
                wide[tuple(slice(0, c) for c in w.shape)] = w
                w = wide
        for kind, value, rows in entries:
            if kind == "reshape":
                continue
            delta = (_lora_delta(value, rows, strength, w.device) if kind == "lora"
                     else _rows(value.float(), rows).to(w.device) * (1.0 if kind == "set" else strength))
            if kind == "lora" and module_path == "x_embedder" and delta.shape[1] > w.shape[1]:
                # BFL's control LoRAs: ComfyUI adds reshape_weight for them; the wider input is zero-padded
                wide = torch.zeros(w.shape[0], delta.shape[1], dtype=w.dtype, device=w.device)
                wide[:, : w.shape[1]] = w
                w = wide
            if delta.numel() != w.numel():
                raise ModelError(f"{path}: LoRA weight for {param} is {tuple(delta.shape)} but the model's is "
                                 f"{tuple(w.shape)}: this LoRA was made for a different model size or family")
            w = delta.reshape(w.shape).to(w.device) if kind == "set" else w + delta.reshape(w.shape).to(w.device)
        _store(module, name, w, base)
        if module_path == "x_embedder" and name == "weight" and w.shape[1] != module.in_features:
            module.in_features = w.shape[1]
            in_channels = w.shape[1]
    if in_channels != transformer.config.in_channels:
        transformer.register_to_config(in_channels=in_channels)  # the clone's config: the original keeps its own
    return new


def _foreign_family(arch: str, unmatched: list[str]) -> str | None:
    """The family a LoRA's unmatched layer names belong to, when that is not `arch`'s: "FLUX.1", "SD3", "an SD UNet"."""
    names = [n.removeprefix("model.").removeprefix("diffusion_model.").removeprefix("lora_unet_") for n in unmatched]
    if arch != "flux" and any(n.startswith(("double_blocks", "single_blocks")) or "single_transformer_blocks" in n
                              for n in names):
        return "FLUX.1"
    if arch != "sd3" and any(n.startswith("joint_blocks") for n in names):
        return "SD3"
    if any(n.startswith(("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block"))
           or n.startswith("unet.") for n in names):
        return "an SD/SDXL UNet"
    return None


def load_dit_lora(model: DiffusionModel, path: Path, strength: float) -> DiffusionModel:
    """A clone of a FLUX.1 / SD3 `model` with the LoRA file's transformer weights at `strength` (input unchanged)."""
    transformer = model.network.transformer
    patches, unmatched, total = read_dit_lora(path, transformer)
    kind = "FLUX.1" if model.arch == "flux" else "SD3/SD3.5"
    foreign = _foreign_family(model.arch, unmatched)
    if foreign or not patches:
        # a few names (final_layer.*, context_embedder) are alike in FLUX.1 and SD3: the blocks tell them apart
        what = f" (it is made for {foreign})" if foreign else ""
        raise ModelError(f"{path}: {len(unmatched)} of its {total} LoRA layers match nothing in this {kind} model"
                         f"{what} (first: {unmatched[:2]}); use a LoRA made for {kind}")
    if unmatched:
        import warnings

        warnings.warn(f"LoRA {path.name}: {len(unmatched)} of {total} layers match nothing in the {model.arch} model "
                      f"(e.g. {unmatched[0]}); they are ignored", stacklevel=3)
    if strength == 0:
        return model
    new = model.clone()
    new.network = patch_dit(model.network, patches, strength, path)
    in_channels = new.network.transformer.config.in_channels
    if isinstance(model.config, dict) and model.config.get("in_channels") != in_channels:
        new.config = {**model.config, "in_channels": in_channels}
    new.patches[str(path)] = strength
    return new
