"""The UNet families: SD1.x, SD2.x, SDXL and the SDXL refiner (comfykit's own LDM-layout UNet, see unet.py).

Which one a checkpoint is comes from its UNet keys and the text encoders beside them; the UNet's shape is read
off its tensors, so tiny test models and odd sizes load the same way as the real ones.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..sampling import latent_formats
from ..sampling.schedulers import ModelSamplingDiscrete
from .family import DiffusionModel, ModelFamily, ModelInputs, concat_image, concat_mask
from .unet import UNetConfig, UNetModel, timestep_embedding


def count_indices(sd: dict[str, Any], pattern: str) -> int:
    """1 + the largest number the regex group of ``pattern`` matches in the keys of ``sd`` (0 when none)."""
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def is_unet(sd: dict[str, Any]) -> bool:
    """An LDM-layout UNet state dict (prefix removed)?"""
    return "input_blocks.0.0.weight" in sd and "out.2.weight" in sd


def infer_unet_config(sd: dict[str, Any], arch: str) -> UNetConfig:
    """UNetConfig from LDM UNet tensor shapes (levels, res blocks, depths, context, linear proj, adm)."""
    w = sd["input_blocks.0.0.weight"]
    mc = w.shape[0]
    mults, res_blocks, depths = [], [], []
    level_blocks, level_depth, mult = 0, 0, None
    for n in range(1, count_indices(sd, r"input_blocks\.(\d+)\.")):
        if f"input_blocks.{n}.0.op.weight" in sd:
            mults.append(mult)
            res_blocks.append(level_blocks)
            depths.append(level_depth)
            level_blocks, level_depth = 0, 0
            continue
        mult = sd[f"input_blocks.{n}.0.in_layers.2.weight"].shape[0] // mc
        level_blocks += 1
        level_depth = count_indices(sd, rf"input_blocks\.{n}\.1\.transformer_blocks\.(\d+)\.")
    mults.append(mult)
    res_blocks.append(level_blocks)
    depths.append(level_depth)
    out_depths = tuple(count_indices(sd, rf"output_blocks\.{n}\.1\.transformer_blocks\.(\d+)\.")
                       for n in range(count_indices(sd, r"output_blocks\.(\d+)\.")))
    ctx = next((v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight")), 768)
    proj = next((v for k, v in sd.items() if k.endswith("proj_in.weight")), None)
    adm = sd["label_emb.0.0.weight"].shape[1] if "label_emb.0.0.weight" in sd else None
    return UNetConfig(
        in_channels=w.shape[1], out_channels=sd["out.2.weight"].shape[0], model_channels=mc,
        channel_mult=tuple(mults), num_res_blocks=tuple(res_blocks), transformer_depth=tuple(depths),
        transformer_depth_output=out_depths,
        transformer_depth_middle=count_indices(sd, r"middle_block\.1\.transformer_blocks\.(\d+)\."),
        context_dim=ctx, num_heads=8, num_head_channels=-1 if arch == "sd1" else 64,
        use_linear=proj is not None and proj.ndim == 2, adm_in_channels=adm)


def _linear_proj(unet: dict[str, Any]) -> bool:
    proj = next((v for k, v in unet.items() if k.endswith("proj_in.weight")), None)
    return proj is not None and proj.ndim == 2


class UNetFamily(ModelFamily):
    """What SD1, SD2 and SDXL share: the LDM UNet, its DDPM schedule, cross-attention on the text tokens."""

    latent_format = latent_formats.SD15

    def config(self, sd: dict[str, Any], parts: dict[str, dict[str, Any]]) -> UNetConfig:
        return infer_unet_config(sd, self.name)

    def build(self, config: UNetConfig) -> nn.Module:
        return UNetModel(config)

    def model_sampling(self, config: Any, full: dict[str, Any], parts: dict[str, dict[str, Any]]) -> Any:
        return ModelSamplingDiscrete(self.prediction(full, parts["unet"]))

    def prediction(self, full: dict[str, Any], unet: dict[str, Any]) -> str:
        """"v" when the file says so (ComfyUI's ``v_pred`` / ``edm_vpred`` marker keys), else "eps"."""
        return "v" if "v_pred" in full or "edm_vpred.sigma_max" in full else "eps"

    def model_inputs(self, model: DiffusionModel, cond: torch.Tensor, options: dict[str, Any],
                     x: torch.Tensor) -> ModelInputs:
        inputs = ModelInputs(context=cond.to(device=x.device, dtype=model.dtype))
        channels = x.shape[1]
        extra = getattr(model.config, "in_channels", channels) - channels
        if extra == channels + 1:
            # inpainting UNet: the mask, then the masked image's latent; without a mask ComfyUI feeds an all-ones
            # mask and the latent of a blank image
            mask = concat_mask(options, x)
            image = concat_image(options, x, model.latent_format) if mask is not None else None
            if mask is None:
                mask = torch.ones_like(x[:, :1])
            if image is None:  # ComfyUI's model-space latent of an all-grey image
                blank = torch.tensor([0.8223, -0.6876, 0.6364, 0.1380], device=x.device)
                image = torch.ones_like(x) * blank[:, None, None]
            inputs.concat = torch.cat([mask, image], dim=1)
        elif extra == channels:  # InstructPix2Pix: the source image's raw latent (zeros without one)
            image = concat_image(options, x, fallback=False)
            inputs.concat = torch.zeros_like(x) if image is None else image
        elif extra:
            raise ValueError(f"this UNet takes {model.config.in_channels} input channels: {channels} latent channels "
                             f"and {extra} extra ones, which is neither an inpainting model ({channels + 1} extra: "
                             f"mask and masked image) nor InstructPix2Pix ({channels} extra)")
        if inputs.concat is not None:
            inputs.concat = inputs.concat.to(device=x.device, dtype=model.dtype)
        return inputs

    def forward(self, network: nn.Module, x: torch.Tensor, t: torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
        # ControlNets see the latent without the extra channels, as ComfyUI's do
        control = inputs.control(x, t, inputs) if inputs.control is not None else None
        if inputs.concat is not None:  # inpainting UNets take the masked image's latent and the mask as channels
            x = torch.cat([x, inputs.concat], dim=1)
        if control is None:
            return network(x, t, inputs.context, inputs.pooled)
        return network(x, t, inputs.context, inputs.pooled, control=control)

    def describe(self, config: UNetConfig) -> str:
        return f"channels={config.model_channels}, mult={config.channel_mult}"


class SD1(UNetFamily):
    """Stable Diffusion 1.x: CLIP-L text encoder, 768-wide context."""

    name = "sd1"
    text_encoders = ("clip_l",)

    def detect(self, parts: dict[str, dict[str, Any]]) -> bool:
        return is_unet(parts["unet"])


class SD2(UNetFamily):
    """Stable Diffusion 2.x: OpenCLIP-H text encoder, linear projections, eps or v prediction."""

    name = "sd2"
    text_encoders = ("clip_h",)

    def detect(self, parts: dict[str, dict[str, Any]]) -> bool:
        unet = parts["unet"]
        return is_unet(unet) and ("clip_h" in parts or ("clip_l" not in parts and _linear_proj(unet)))

    def prediction(self, full: dict[str, Any], unet: dict[str, Any]) -> str:
        if super().prediction(full, unet) == "v":
            return "v"
        if unet["input_blocks.0.0.weight"].shape[1] != 4:  # inpainting models are eps: ComfyUI skips the heuristic
            return "eps"
        # ComfyUI's heuristic: v-prediction SD2 models have widely spread norm1 biases in the last attention block
        last = [k for k in unet if re.match(r"output_blocks\.\d+\.1\.transformer_blocks\.0\.norm1\.bias$", k)]
        if last:
            key = max(last, key=lambda k: int(k.split(".")[1]))
            if unet[key].float().std() > 0.09:
                return "v"
        return "eps"


class SDXL(UNetFamily):
    """SDXL base: CLIP-L + OpenCLIP-G, and an adm vector of pooled text + size/crop embeddings."""

    name = "sdxl"
    latent_format = latent_formats.SDXL
    text_encoders = ("clip_l", "clip_g")
    size_fields = ("height", "width", "crop_h", "crop_w", "target_height", "target_width")

    def detect(self, parts: dict[str, dict[str, Any]]) -> bool:
        unet = parts["unet"]
        return is_unet(unet) and ("clip_g" in parts or "label_emb.0.0.weight" in unet)

    def sizes(self, width: int, height: int, options: dict[str, Any]) -> list[float]:
        """The numbers embedded after the pooled vector, in ComfyUI's order."""
        return [height, width, options.get("crop_h", 0), options.get("crop_w", 0),
                options.get("target_height") or height, options.get("target_width") or width]

    def encode_adm(self, config: UNetConfig, pooled: torch.Tensor | None, width: int, height: int,
                   **options: Any) -> torch.Tensor | None:
        """``y``: the pooled text embedding followed by 256-dim embeddings of the size numbers."""
        adm = config.adm_in_channels
        if not adm:
            return None
        numbers = self.sizes(width, height, options)
        pooled_dim = adm - len(numbers) * 256
        if pooled is None:
            pooled = torch.zeros(1, pooled_dim)
        pooled = pooled.float().reshape(-1, pooled.shape[-1]).cpu()
        if pooled.shape[-1] != pooled_dim:
            raise ValueError(f"pooled output has {pooled.shape[-1]} values but this {self.name} model expects "
                             f"{pooled_dim}")
        sizes = timestep_embedding(torch.tensor(numbers, dtype=torch.float32), 256).reshape(1, -1)
        return torch.cat([pooled, sizes.expand(pooled.shape[0], -1)], dim=1)

    def model_inputs(self, model: DiffusionModel, cond: torch.Tensor, options: dict[str, Any],
                     x: torch.Tensor) -> ModelInputs:
        inputs = super().model_inputs(model, cond, options, x)
        w, h = options.get("width", x.shape[3] * 8), options.get("height", x.shape[2] * 8)
        sizes = {k: options[k] for k in ("crop_w", "crop_h", "target_width", "target_height", "aesthetic_score",
                                         "prompt_type") if k in options}
        y = self.encode_adm(model.config, options.get("pooled_output"), w, h, **sizes)
        inputs.pooled = None if y is None else y.to(device=x.device, dtype=model.dtype)
        return inputs


class SDXLRefiner(SDXL):
    """The SDXL refiner: OpenCLIP-G only; its adm vector embeds an aesthetic score instead of the target size."""

    name = "sdxl_refiner"
    text_encoders = ("clip_g",)

    def detect(self, parts: dict[str, dict[str, Any]]) -> bool:
        unet = parts["unet"]
        return super().detect(parts) and "clip_l" not in parts and (
            "clip_g" in parts or unet["label_emb.0.0.weight"].shape[1] == 2560)

    def sizes(self, width: int, height: int, options: dict[str, Any]) -> list[float]:
        # ComfyUI: 6.0 for positive prompts and 2.5 for negative ones unless the conditioning sets a score
        default = 2.5 if options.get("prompt_type") == "negative" else 6.0
        return [height, width, options.get("crop_h", 0), options.get("crop_w", 0),
                options.get("aesthetic_score", default)]


#: The UNet families, most specific first (detection takes the first that matches).
UNET_FAMILIES: tuple[ModelFamily, ...] = (SDXLRefiner(), SDXL(), SD2(), SD1())
