"""Write our modules as a diffusers-format folder (`unet/`, `vae/`, `text_encoder(_2)/` + config.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import keys


def diffusers_unet_config(cfg) -> dict[str, Any]:
    """`UNet2DConditionModel` kwargs for a `UNetConfig` (diffusers calls the head count attention_head_dim)."""
    mc = cfg.model_channels
    channels = [mc * m for m in cfg.channel_mult]
    heads = [cfg.heads(c)[0] for c in channels]
    out: dict[str, Any] = dict(
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, block_out_channels=channels,
        layers_per_block=list(cfg.num_res_blocks),
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in cfg.transformer_depth],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(cfg.transformer_depth)],
        cross_attention_dim=cfg.context_dim, attention_head_dim=heads if cfg.num_head_channels > 0 else cfg.num_heads,
        use_linear_projection=cfg.use_linear, transformer_layers_per_block=[max(1, d) for d in cfg.transformer_depth],
        norm_num_groups=32, sample_size=8)
    if cfg.adm_in_channels:
        out.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                   projection_class_embeddings_input_dim=cfg.adm_in_channels)
    return out


def diffusers_vae_config(cfg) -> dict[str, Any]:
    """`AutoencoderKL` kwargs for a `VAEConfig`."""
    levels = len(cfg.ch_mult)
    return dict(in_channels=cfg.in_channels, out_channels=cfg.out_ch, latent_channels=cfg.z_channels,
                block_out_channels=[cfg.ch * m for m in cfg.ch_mult], layers_per_block=cfg.num_res_blocks,
                down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
                norm_num_groups=32, sample_size=64)


def hf_clip_config(cfg) -> dict[str, Any]:
    """`CLIPTextConfig` kwargs for a `CLIPConfig`."""
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.width, intermediate_size=cfg.intermediate,
                num_attention_heads=cfg.heads, num_hidden_layers=cfg.layers,
                max_position_embeddings=cfg.max_positions, hidden_act=cfg.activation,
                projection_dim=cfg.projection_dim or cfg.width, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407 if cfg.activation == "quick_gelu" else 0)


def _fill(target, ours: dict[str, Any], converted_keys: list[str]) -> None:
    sd = target.state_dict()
    new = {dk: ours[lk].reshape(sd[dk].shape) for dk, lk in zip(sd, converted_keys)}
    target.load_state_dict(new)


def write_folder(path: Path, arch: str, components: dict[str, Any], configs: tuple) -> Path:
    """Save `components` (our unet/vae/clip modules) in diffusers layout under `path`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ucfg, vcfg, ccfgs = configs
    path.mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel(**diffusers_unet_config(ucfg))
    _fill(unet, components["unet"].state_dict(), list(keys.unet_diffusers_to_ldm(unet.state_dict())))
    unet.save_pretrained(path / "unet")
    vae = AutoencoderKL(**diffusers_vae_config(vcfg))
    _fill(vae, components["vae"].state_dict(), list(keys.vae_diffusers_to_ldm(vae.state_dict())))
    vae.save_pretrained(path / "vae")
    folders = ["text_encoder", "text_encoder_2"]
    for folder, (name, cfg) in zip(folders, ccfgs.items()):
        cls = CLIPTextModelWithProjection if cfg.projection_dim and name == "clip_g" else CLIPTextModel
        model = cls(CLIPTextConfig(**hf_clip_config(cfg)))
        ours = components[name].state_dict()
        model_keys = [k if k.startswith(("text_model.", "text_projection")) else "text_model." + k
                      for k in model.state_dict()]
        _fill(model, ours, model_keys)
        model.save_pretrained(path / folder)
    v = arch == "sd2-v"
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
        "prediction_type": "v_prediction" if v else "epsilon"}, indent=2))
    index = {"_class_name": "StableDiffusionXLPipeline" if arch == "sdxl" else "StableDiffusionPipeline",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    for folder, name in zip(folders, ccfgs):
        index[folder] = ["transformers", "CLIPTextModelWithProjection" if name == "clip_g" else "CLIPTextModel"]
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path
