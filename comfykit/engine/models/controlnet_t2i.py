"""T2I-Adapters on diffusers' ``T2IAdapter``: features of the hint image added to the UNet's input blocks.

Layouts read: TencentARC's original files (``conv_in`` + ``body.N.*`` for the full adapters, ``body.N.in_conv`` /
``body.N.body.M.*`` for the light ones; ``.pth`` or ``.safetensors``, possibly nested under ``adapter``) and
diffusers' (``adapter.*``, single files or folders). The configuration is read off the shapes: the pixel-unshuffle
factor from ``conv_in``'s input width (16 for SDXL's ``full_adapter_xl``: 256 or 768 inputs, as ComfyUI decides).

Semantics follow ComfyUI 0.3.64 (its ``T2IAdapter`` control): the hint is resized to the latent x 8, rounded up to
the unshuffle factor; a one-channel adapter gets the mean of the image's channels; the features are computed once
per hint and added, times the strength, to the output of an input block of each UNet level:

- SD1/SD2 (``full_adapter``, ``light_adapter``): feature i after the last res block of level i;
- SDXL (``full_adapter_xl``): the first after level 0's downsample, feature i after the last res block of level i,
  the last one after the middle block.

The ``"input"`` list is in ComfyUI's order: the UNet pops its last entry after each input block.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from .dit_common import build_on_meta, config_from_folder, count_blocks

DIFFUSERS_PREFIX = "adapter."


def is_t2i_adapter(sd: dict[str, Any]) -> bool:
    """A T2I-Adapter state dict, in TencentARC's or diffusers' layout (or nested under ``adapter``)?"""
    if isinstance(sd.get("adapter"), dict):
        return True
    if any(k.startswith(("input_blocks.", "model.diffusion_model.")) for k in sd):
        return False
    return any(k in sd for k in ("conv_in.weight", "body.0.in_conv.weight", "adapter.conv_in.weight",
                                 "adapter.body.0.in_conv.weight"))


def original_to_diffusers(sd: dict[str, Any], name: str) -> dict[str, Any]:
    """TencentARC's original T2I-Adapter keys in diffusers' ``T2IAdapter`` names (ModelError for variants it lacks)."""
    out: dict[str, Any] = {}
    if "body.0.in_conv.weight" in sd and "conv_in.weight" not in sd:  # light: body.i.{in_conv, body.j, out_conv}
        for key, value in sd.items():
            out[DIFFUSERS_PREFIX + re.sub(r"^body\.(\d+)\.body\.(\d+)\.", r"body.\1.resnets.\2.", key)] = value
        return out
    if any(k.endswith("down_opt.op.weight") for k in sd):
        raise ModelError(f"{name}: a T2I-Adapter that downsamples with convolutions (use_conv): not implemented yet "
                         "in the embedded engine; run this workflow on a ComfyUI server with ck.ComfyServer")
    if "body.0.block2.weight" in sd and sd["body.0.block2.weight"].shape[-1] != 1:
        raise ModelError(f"{name}: a T2I-Adapter with {sd['body.0.block2.weight'].shape[-1]}x"
                         f"{sd['body.0.block2.weight'].shape[-1]} res-block kernels: not implemented yet in the "
                         "embedded engine (diffusers' adapters use 1x1); run it on a ComfyUI server with "
                         "ck.ComfyServer")
    if any(k.startswith("body.") and k.split(".")[2] == "skep" for k in sd):
        raise ModelError(f"{name}: a T2I-Adapter with skip convolutions (sk=False): not implemented yet in the "
                         "embedded engine; run it on a ComfyUI server with ck.ComfyServer")
    # full adapters: ComfyUI reads the flat body as 2 res blocks per level
    for key, value in sd.items():
        m = re.match(r"^body\.(\d+)\.(.*)$", key)
        if m is None:
            out[DIFFUSERS_PREFIX + key] = value
            continue
        n, rest = int(m.group(1)), m.group(2)
        if rest.startswith("in_conv."):
            out[f"{DIFFUSERS_PREFIX}body.{n // 2}.{rest}"] = value
        else:
            out[f"{DIFFUSERS_PREFIX}body.{n // 2}.resnets.{n % 2}.{rest}"] = value
    return out


def infer_t2i_config(sd: dict[str, Any], folder_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """``T2IAdapter`` kwargs from diffusers-layout shapes (a folder's config.json wins where it says more)."""
    levels = count_blocks(sd, "adapter.body")
    blocks = count_blocks(sd, "adapter.body.0.resnets")
    if "adapter.conv_in.weight" in sd:
        cin = sd["adapter.conv_in.weight"].shape[1]
        factor = 16 if cin in (256, 768) else 8
        kind = "full_adapter_xl" if factor == 16 else "full_adapter"
        channels = [sd[f"adapter.body.{i}.resnets.0.block1.weight"].shape[0] for i in range(levels)]
    else:
        cin = sd["adapter.body.0.in_conv.weight"].shape[1]
        factor, kind = 8, "light_adapter"
        # the last light block repeats the width of the one before: diffusers lists one width fewer
        channels = [sd[f"adapter.body.{i}.out_conv.weight"].shape[0] for i in range(levels - 1)]
    config = {"channels": channels, "num_res_blocks": blocks, "downscale_factor": factor, "adapter_type": kind}
    config = config_from_folder(config, folder_config, ("adapter_type", "downscale_factor"))
    if config["adapter_type"] == "full_adapter_xl" and config["downscale_factor"] == 8:
        config["downscale_factor"] = 16
    config["in_channels"] = cin // config["downscale_factor"] ** 2
    return config


class T2IAdapterNet(nn.Module):
    """A diffusers ``T2IAdapter`` giving ComfyUI's ``"input"`` (and SDXL ``"middle"``) residual lists."""

    kind = "t2i"

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @property
    def xl(self) -> bool:
        """An SDXL adapter (``full_adapter_xl``)?"""
        return self.net.config.adapter_type == "full_adapter_xl"

    @property
    def channels(self) -> list[int]:
        """The width of each feature it makes, in order."""
        cfg = self.net.config
        channels = list(cfg.channels)
        return channels + channels[-1:] if cfg.adapter_type == "light_adapter" else channels

    def describe(self) -> str:
        """What it is for, as far as the shapes say."""
        kind = {"full_adapter": "full", "light_adapter": "light", "full_adapter_xl": "full XL"}[
            self.net.config.adapter_type]
        return f"an {'SDXL' if self.xl else 'SD1.x/SD2.x'} T2I-Adapter ({kind}, feature widths {self.channels})"

    def _targets(self, cfg: Any) -> tuple[list[int], bool] | None:
        """Input-block indices the features go after (and whether the last goes to the middle), or None."""
        ends, downs, n = [], [], 0
        for level, blocks in enumerate(cfg.num_res_blocks):
            n += blocks
            ends.append(n)
            if level != len(cfg.num_res_blocks) - 1:
                n += 1
                downs.append(n)
        widths = [cfg.model_channels * m for m in cfg.channel_mult]
        feats = self.channels
        if self.xl:
            ok = len(widths) == len(feats) - 1 >= 2 and feats[:-1] == widths and feats[-1] == widths[-1]
            return ([downs[0]] + ends[1:], True) if ok else None
        return (ends, False) if feats == widths else None

    def check(self, model: Any, name: str) -> None:
        """ModelError unless this adapter's features fit the UNet of ``model`` (a DiffusionModel)."""
        cfg = model.config
        ok = hasattr(cfg, "model_channels") and bool(cfg.adm_in_channels) == self.xl and \
            self._targets(cfg) is not None
        if not ok:
            what = model.family.describe(cfg) if hasattr(model, "family") else repr(model)
            raise ModelError(f"{name}: this is {self.describe()} but the model is {model.arch} ({what}); use a "
                             f"T2I-Adapter made for {model.arch}")

    def hint_ratio(self, vae: Any) -> int:
        """Hint pixels per latent pixel (the decoded size)."""
        return 8

    def hint_size(self, width: int, height: int) -> tuple[int, int]:
        """The hint size rounded up to the pixel-unshuffle factor, as ComfyUI's ``scale_image_to``."""
        f = self.net.config.downscale_factor
        return math.ceil(width / f) * f, math.ceil(height / f) * f

    def prepare_hint(self, hint: torch.Tensor, control: Any, model: Any) -> torch.Tensor:
        """A one-channel adapter reads the mean of the image's channels (ComfyUI's rule)."""
        if self.net.config.in_channels == 1 and hint.shape[1] > 1:
            hint = hint.mean(dim=1, keepdim=True)
        return hint

    def features(self, hint: torch.Tensor, model: Any) -> dict[str, list[torch.Tensor | None]]:
        """{"input": one entry per input block, the last for block 0 (None where nothing is added), "middle"}."""
        feats = self.net(hint.to(next(self.net.parameters()).dtype))
        cfg = model.config
        targets, middle = self._targets(cfg)
        n = sum(cfg.num_res_blocks) + len(cfg.num_res_blocks)  # conv_in, res blocks and downsamples
        placed: list[torch.Tensor | None] = [None] * n
        for block, feat in zip(targets, feats):
            placed[block] = feat
        out: dict[str, list[torch.Tensor | None]] = {"input": placed[::-1]}
        if middle:
            out["middle"] = [feats[-1]]
        return out


def build_t2i_adapter(sd: dict[str, Any], name: str, folder_config: dict[str, Any] | None = None) -> T2IAdapterNet:
    """A :class:`T2IAdapterNet` from a T2I-Adapter state dict of either layout (ModelError when shapes do not fit)."""
    from diffusers import T2IAdapter

    if isinstance(sd.get("adapter"), dict):
        sd = sd["adapter"]
    if not any(k.startswith(DIFFUSERS_PREFIX) for k in sd):
        sd = original_to_diffusers(sd, name)
    try:
        config = infer_t2i_config(sd, folder_config)
    except KeyError as e:
        raise ModelError(f"{name}: the T2I-Adapter weights are incomplete (missing {e}); re-download the file"
                         ) from None
    except IndexError:
        raise ModelError(f"{name}: the T2I-Adapter weights are damaged (tensors of the wrong rank); re-download "
                         "the file") from None
    return T2IAdapterNet(build_on_meta(lambda: T2IAdapter(**config), sd, "T2I-Adapter", name))
