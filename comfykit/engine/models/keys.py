"""Every state-dict key conversion in one place: checkpoint prefixes, OpenCLIP, diffusers folders, LoRA names."""

from __future__ import annotations

import re
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
#: Text encoders stored in Hugging Face layout, by checkpoint prefix (ComfyUI saves FLUX/SD3 ones as text_encoders.*)
HF_TEXT_PREFIXES = {"cond_stage_model.transformer.": "clip_l", "conditioner.embedders.0.transformer.": "clip_l",
                    "text_encoders.clip_l.transformer.": "clip_l", "text_encoders.clip_g.transformer.": "clip_g"}
#: Text encoders stored in OpenCLIP layout (the SDXL refiner keeps its OpenCLIP-G at embedders.0)
OPENCLIP_PREFIXES = {"cond_stage_model.model.": "clip_h", "conditioner.embedders.1.model.": "clip_g",
                     "conditioner.embedders.0.model.": "clip_g"}
#: T5 encoders, kept in their own (transformers) key names
T5_PREFIXES = {"text_encoders.t5xxl.transformer.": "t5xxl"}

# diffusers ResnetBlock2D -> LDM ResBlock
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
             "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}


def split_checkpoint(sd: dict[str, Any], convert_text: bool = True) -> dict[str, dict[str, Any]]:
    """A single-file checkpoint -> {"unet", "vae", "clip_l", "clip_g" | "clip_h", "t5xxl"} state dicts in our names.

    "unet" is the diffusion model (UNet or transformer) with ``model.diffusion_model.`` removed.
    ``convert_text=False`` leaves the text encoders' keys as stored (enough to tell which are there).
    """
    parts: dict[str, dict[str, Any]] = {"unet": {}, "vae": {}}
    for key, value in sd.items():
        if key.startswith(UNET_PREFIX):
            parts["unet"][key[len(UNET_PREFIX):]] = value
            continue
        for prefix in VAE_PREFIXES:
            if key.startswith(prefix):
                if not key.startswith(prefix + "loss."):  # old training checkpoints keep the VAE's GAN loss
                    parts["vae"][key[len(prefix):]] = value
                break
        else:
            for prefixes in (HF_TEXT_PREFIXES, OPENCLIP_PREFIXES, T5_PREFIXES):
                prefix = next((p for p in prefixes if key.startswith(p)), None)
                if prefix is not None:
                    parts.setdefault(prefixes[prefix], {})[key[len(prefix):]] = value
                    break
    for name in ("clip_l", "clip_h", "clip_g"):
        if name in parts and convert_text:
            sd_part = parts[name]
            in_openclip = any(k.startswith(("transformer.resblocks.", "token_embedding")) for k in sd_part)
            parts[name] = openclip_to_hf(sd_part) if in_openclip else hf_clip_keys(sd_part)
    return parts


def hf_clip_keys(sd: dict[str, Any]) -> dict[str, Any]:
    """HF CLIP keys with or without `text_model.` (transformers >= 5.6 is flat) -> with; drop position_ids."""
    out = {}
    for key, value in sd.items():
        if key.endswith("position_ids") or key.startswith("logit_scale"):
            continue
        if not key.startswith(("text_model.", "text_projection")):
            key = "text_model." + key
        out[key] = value
    return out


def openclip_to_hf(sd: dict[str, Any]) -> dict[str, Any]:
    """OpenCLIP text tower (`transformer.resblocks.N.attn.in_proj_weight`, ...) -> HF CLIP names."""
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if key == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_final."):
            out["text_model.final_layer_norm." + key[len("ln_final."):]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()  # OpenCLIP multiplies x @ P
        elif key.startswith("transformer.resblocks."):
            m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)", key)
            n, rest = m.group(1), m.group(2)
            base = f"text_model.encoder.layers.{n}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight | bias
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}.{kind}"] = chunk.contiguous()
            else:
                rest = (rest.replace("attn.out_proj", "self_attn.out_proj").replace("ln_1", "layer_norm1")
                        .replace("ln_2", "layer_norm2").replace("mlp.c_fc", "mlp.fc1").replace("mlp.c_proj", "mlp.fc2"))
                out[base + rest] = value
    return out


def hf_to_openclip(sd: dict[str, Any], layers: int) -> dict[str, Any]:
    """HF CLIP names -> OpenCLIP's (used to write SD2/SDXL-layout demo checkpoints)."""
    import torch

    out: dict[str, Any] = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
    }
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    for n in range(layers):
        hf, oc = f"text_model.encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            out[f"{oc}attn.in_proj_{kind}"] = torch.cat([sd[f"{hf}self_attn.{p}.{kind}"]
                                                         for p in ("q_proj", "k_proj", "v_proj")])
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{oc}{b}.{kind}"] = sd[f"{hf}{a}.{kind}"]
    return out


def unet_block_map(num_res_blocks: list[int], has_attn: list[bool], has_mid_attn: bool = True,
                   ) -> dict[str, str]:
    """diffusers UNet module prefixes -> LDM ones, for `num_res_blocks` per level (down side)."""
    levels = len(num_res_blocks)
    mapping = dict(_UNET_TOP)
    n = 1
    for i in range(levels):
        for j in range(num_res_blocks[i]):
            mapping[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{n}.0"
            if has_attn[i]:
                mapping[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{n}.1"
            n += 1
        if i != levels - 1:
            mapping[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"
            n += 1
    mapping["mid_block.resnets.0"] = "middle_block.0"
    if has_mid_attn:
        mapping["mid_block.attentions.0"] = "middle_block.1"
    mapping["mid_block.resnets.1"] = f"middle_block.{2 if has_mid_attn else 1}"
    n = 0
    for i in range(levels):
        level = levels - 1 - i
        for j in range(num_res_blocks[level] + 1):
            mapping[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{n}.0"
            if has_attn[level]:
                mapping[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{n}.1"
            if level and j == num_res_blocks[level]:
                mapping[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{n}.{2 if has_attn[level] else 1}.conv"
            n += 1
    return mapping


def _rename_unet_module(diffusers_name: str, block_map: dict[str, str]) -> str | None:
    """A diffusers UNet parameter/module name (without .weight) -> the LDM one, or None."""
    for prefix in sorted(block_map, key=len, reverse=True):
        if diffusers_name == prefix or diffusers_name.startswith(prefix + "."):
            rest = diffusers_name[len(prefix):]
            if ".resnets." in prefix:
                head = rest[1:].split(".", 1)[0] if rest else ""
                if head in _UNET_RESNET:
                    rest = "." + _UNET_RESNET[head] + rest[1 + len(head):]
            return block_map[prefix] + rest
    return None


def diffusers_unet_shape(sd: dict[str, Any]) -> tuple[list[int], list[bool], bool]:
    """(res blocks per level, attention per level, middle attention) of a diffusers UNet state dict."""
    counts: dict[int, int] = {}
    attn: dict[int, bool] = {}
    for key in sd:
        m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.", key)
        if m:
            i, j = int(m.group(1)), int(m.group(3))
            counts[i] = max(counts.get(i, 0), j + 1)
            attn[i] = attn.get(i, False) or m.group(2) == "attentions"
    levels = max(counts) + 1
    return ([counts.get(i, 0) for i in range(levels)], [attn.get(i, False) for i in range(levels)],
            any(k.startswith("mid_block.attentions.") for k in sd))


def unet_diffusers_to_ldm(sd: dict[str, Any]) -> dict[str, Any]:
    """diffusers `UNet2DConditionModel` state dict -> LDM `openaimodel` names."""
    block_map = unet_block_map(*diffusers_unet_shape(sd))
    out = {}
    for key, value in sd.items():
        module, _, kind = key.rpartition(".")
        new = _rename_unet_module(module, block_map)
        if new is None:
            raise KeyError(f"unexpected diffusers UNet key {key!r}")
        out[f"{new}.{kind}"] = value
    return out


def unet_ldm_to_diffusers_names(cfg) -> dict[str, dict[str, str]]:
    """LDM UNet module names -> diffusers ones for a `UNetConfig` (LoRA files name either)."""
    block_map = unet_block_map(list(cfg.num_res_blocks), [d > 0 for d in cfg.transformer_depth],
                               cfg.transformer_depth_middle > 0)
    inverse = {ldm: dif for dif, ldm in block_map.items()}
    resnet_inverse = {v: k for k, v in _UNET_RESNET.items()}
    return {"inverse": inverse, "resnet": resnet_inverse}


def unet_ldm_to_diffusers(module: str, names: dict) -> str | None:
    """One LDM UNet module path -> its diffusers path, using `unet_ldm_to_diffusers_names(cfg)`."""
    inverse, resnet = names["inverse"], names["resnet"]
    for prefix in sorted(inverse, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            rest = module[len(prefix):]
            target = inverse[prefix]
            if ".resnets." in target and rest:
                for ldm_inner, dif_inner in resnet.items():
                    if rest[1:] == ldm_inner or rest[1:].startswith(ldm_inner + "."):
                        rest = "." + dif_inner + rest[1 + len(ldm_inner):]
                        break
            return target + rest
    return None


def vae_diffusers_to_ldm(sd: dict[str, Any]) -> dict[str, Any]:
    """diffusers `AutoencoderKL` state dict -> LDM names (`encoder.down.N.block.M`, `mid.attn_1.q`, ...)."""
    up_levels = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))),
                        default=-1)
    out = {}
    for key, value in sd.items():
        new = key
        new = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.block_1.", new)
        new = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.block_2.", new)
        m = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", new)
        if m:
            new = f"{m.group(1)}.mid.attn_1.{_VAE_ATTN[m.group(2)]}.{m.group(3)}"
            if value.ndim == 2:  # diffusers stores the attention projections as Linear
                value = value[:, :, None, None]
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.(.*)$", new)
        if m:
            level = up_levels - 1 - int(m.group(1))
            part = "block." if m.group(2) == "resnets" else "upsample."
            new = f"decoder.up.{level}.{part}{m.group(3)}"
        new = new.replace("conv_norm_out", "norm_out").replace(".conv_shortcut.", ".nin_shortcut.")
        out[new] = value
    return out


def vae_state_dict(sd: dict[str, Any]) -> dict[str, Any]:
    """A standalone VAE file (LDM with or without `first_stage_model.`, or diffusers) -> LDM names."""
    for prefix in VAE_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in sd):
        sd = vae_diffusers_to_ldm(sd)
    out = {}
    for key, value in sd.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # some converted VAEs store 1x1 convs as Linear
        out[key] = value
    return out


def lora_base_name(key: str) -> tuple[str, str] | None:
    """A LoRA file key -> (target name, part in {"down","up","alpha"}), or None for other keys."""
    for suffix, part in ((".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha"),
                         (".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora.down.weight", "down"),
                         (".lora.up.weight", "up"), ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),
                         (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up")):
        if key.endswith(suffix):
            base = key[: -len(suffix)].replace(".processor.", ".")
            return base, part
    return None


def lora_target_names(prefix_kind: str, module: str, diffusers_module: str | None = None) -> list[str]:
    """Every name a LoRA file may use for one module of ours (kohya and diffusers/PEFT styles)."""
    if prefix_kind == "unet":
        names = ["lora_unet_" + module.replace(".", "_"), "diffusion_model." + module, UNET_PREFIX + module]
        if diffusers_module:
            names += ["lora_unet_" + diffusers_module.replace(".", "_"), "unet." + diffusers_module,
                      "unet.base_model.model." + diffusers_module]
        return names
    # text encoders: module is an HF CLIP path like "text_model.encoder.layers.0.self_attn.q_proj"
    kohya, dif = {"clip_l": ("lora_te_", "text_encoder."), "clip_l_xl": ("lora_te1_", "text_encoder."),
                  "clip_g": ("lora_te2_", "text_encoder_2."), "clip_h": ("lora_te_", "text_encoder.")}[prefix_kind]
    flat = module[len("text_model."):] if module.startswith("text_model.") else module
    return [kohya + module.replace(".", "_"), dif + module, dif + flat]
