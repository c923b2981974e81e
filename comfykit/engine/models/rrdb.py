"""ESRGAN's RRDBNet (Wang et al. 2018): the network of ESRGAN, Real-ESRGAN and 4x-UltraSharp-style upscalers.

Weights come in three key layouts, all read here (the three spandrel's ESRGAN reads, less ESRGAN+):

- the original ESRGAN repository's: ``model.0`` (first conv), ``model.1.sub.N.RDB1.conv1.0`` (the blocks),
  ``model.1.sub.<blocks>`` (trunk conv), then the upsampling and output convs at higher ``model.K`` indices;
- BasicSR / Real-ESRGAN's: ``conv_first``, ``body.N.rdb1.conv1``, ``conv_body``, ``conv_up1``..., ``conv_hr``,
  ``conv_last``;
- BSRGAN / RealSR's (early BasicSR): ``conv_first``, ``RRDB_trunk.N.RDB1.conv1``, ``trunk_conv``, ``upconv1``...,
  ``HRconv``, ``conv_last``.

``convert`` maps the other layouts onto the new one and ``infer_config`` reads every size off the tensor shapes:
channels, features, growth, block count, number of x2 stages (scale 1, 2, 4, 8), pixel-shuffle upsampling and
Real-ESRGAN's pixel-unshuffled input (its x2 and x1 models). ``make_state_dict`` writes random weights in either
layout, for tests and ``ck.demo``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


@dataclass(frozen=True)
class RRDBConfig:
    """The shape of an RRDBNet (the defaults are ESRGAN / RealESRGAN_x4plus: 64 features, 23 blocks, 4x)."""

    in_channels: int = 3
    out_channels: int = 3
    features: int = 64  # nf: channels of the trunk
    growth: int = 32  # gc: channels each dense conv adds
    blocks: int = 23  # RRDB blocks in the trunk
    upsamples: int = 2  # x2 stages after the trunk
    pixel_shuffle: bool = False  # x2 stage = conv to 4*nf + PixelShuffle (else nearest resize + conv)
    unshuffle: int = 1  # Real-ESRGAN x2 / x1: the input is pixel-unshuffled by 2 / 4 first

    @property
    def scale(self) -> int:
        """How many times larger the output is than the input."""
        return 2 ** self.upsamples // self.unshuffle


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2, inplace=True)  # in place: the 4x tail's feature maps are the memory peak


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; the result is scaled by 0.2 and added to the input."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(_lrelu(conv(torch.cat(feats, 1))))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, scaled by 0.2, plus the input."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(nf, gc)
        self.rdb2 = ResidualDenseBlock(nf, gc)
        self.rdb3 = ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """RRDBNet with BasicSR's module names; ``forward`` maps [B, C, H, W] in 0..1 to [B, C', sH, sW]."""

    def __init__(self, config: RRDBConfig):
        super().__init__()
        c = config
        self.config = c
        self.conv_first = nn.Conv2d(c.in_channels * c.unshuffle ** 2, c.features, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(c.features, c.growth) for _ in range(c.blocks)))
        self.conv_body = nn.Conv2d(c.features, c.features, 3, 1, 1)
        up_out = c.features * 4 if c.pixel_shuffle else c.features
        for i in range(c.upsamples):
            setattr(self, f"conv_up{i + 1}", nn.Conv2d(c.features, up_out, 3, 1, 1))
        self.conv_hr = nn.Conv2d(c.features, c.features, 3, 1, 1)
        self.conv_last = nn.Conv2d(c.features, c.out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        c = self.config
        h, w = x.shape[-2:]
        if c.unshuffle > 1:  # pad to a multiple of the factor (reflect), crop the output back, as Real-ESRGAN
            pad_h, pad_w = -h % c.unshuffle, -w % c.unshuffle
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
            x = F.pixel_unshuffle(x, c.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(c.upsamples):
            conv = getattr(self, f"conv_up{i + 1}")
            if c.pixel_shuffle:
                feat = _lrelu(F.pixel_shuffle(conv(feat), 2))
            else:
                up = F.interpolate(feat, scale_factor=2, mode="nearest")
                del feat  # why: at 4x the upsampled maps dominate memory; keep at most two alive
                feat = _lrelu(conv(up))
                del up
        out = self.conv_last(_lrelu(self.conv_hr(feat)))
        if c.unshuffle > 1:
            out = out[..., :h * c.scale, :w * c.scale]
        return out


# -- key layouts --------------------------------------------------------------------------------------------
_OLD_BLOCK = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_TRUNK = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)$")
_OLD_CONV = re.compile(r"model\.(\d+)\.(weight|bias)$")


_BSRGAN = [(re.compile(r"RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\."), r"body.\1.rdb\2.conv\3."),
           (re.compile(r"trunk_conv\."), "conv_body."), (re.compile(r"upconv(\d+)\."), r"conv_up\1."),
           (re.compile(r"HRconv\."), "conv_hr.")]


def layout(sd: dict[str, Any]) -> str | None:
    """"new" (BasicSR names), "old" (the ESRGAN repository's ``model.N``), "bsrgan" (BSRGAN / RealSR's
    ``RRDB_trunk``) or None when not an RRDBNet."""
    if "conv_first.weight" in sd and "body.0.rdb1.conv1.weight" in sd and "conv_last.weight" in sd:
        return "new"
    if "model.0.weight" in sd and "model.1.sub.0.RDB1.conv1.0.weight" in sd:
        return "old"
    if "conv_first.weight" in sd and "RRDB_trunk.0.RDB1.conv1.weight" in sd and "conv_last.weight" in sd:
        return "bsrgan"
    return None


def convert(sd: dict[str, Any]) -> dict[str, Any]:
    """The state dict in BasicSR's names (unchanged when it already uses them); ValueError if not an RRDBNet."""
    kind = layout(sd)
    if kind == "new":
        return dict(sd)
    if kind == "bsrgan":
        out = {}
        for key, value in sd.items():
            for pattern, name in _BSRGAN:
                if pattern.match(key):
                    key = pattern.sub(name, key, count=1)
                    break
            out[key] = value
        return out
    if kind != "old":
        raise ValueError("not an RRDBNet state dict (no conv_first/body.0.rdb1, model.0/model.1.sub.0.RDB1 or "
                         "conv_first/RRDB_trunk.0.RDB1 keys)")
    blocks = 1 + max(int(m.group(1)) for k in sd if (m := _OLD_BLOCK.match(k)))
    tail = sorted({int(m.group(1)) for k in sd if (m := _OLD_CONV.match(k))} - {0})
    if len(tail) < 2:
        raise ValueError("an ESRGAN state dict without its output convs (model.K.weight after model.1)")
    names = [f"conv_up{i + 1}" for i in range(len(tail) - 2)] + ["conv_hr", "conv_last"]
    by_index = dict(zip(tail, names))
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if m := _OLD_BLOCK.match(key):
            out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
        elif (m := _OLD_TRUNK.match(key)) and int(m.group(1)) == blocks:
            out[f"conv_body.{m.group(2)}"] = value
        elif (m := _OLD_CONV.match(key)) and int(m.group(1)) == 0:
            out[f"conv_first.{m.group(2)}"] = value
        elif m := _OLD_CONV.match(key):
            out[f"{by_index[int(m.group(1))]}.{m.group(2)}"] = value
        else:
            out[key] = value  # unknown: left for the strict load to name
    return out


def infer_config(sd: dict[str, Any]) -> RRDBConfig:
    """The RRDBConfig of a state dict in BasicSR's names, from tensor shapes."""
    first = sd["conv_first.weight"]
    features, raw_in = first.shape[0], first.shape[1]
    out_channels = sd["conv_last.weight"].shape[0]
    upsamples = sum(1 for k in sd if re.fullmatch(r"conv_up\d+\.weight", k))
    pixel_shuffle = upsamples > 0 and sd["conv_up1.weight"].shape[0] == 4 * features
    unshuffle = 1
    # Real-ESRGAN x2 / x1 feed the 4x network a pixel-unshuffled image: 4x / 16x the channels
    if upsamples == 2 and raw_in in (out_channels * 4, out_channels * 16):
        unshuffle = 2 if raw_in == out_channels * 4 else 4
    blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.rdb1\.", k)))
    return RRDBConfig(in_channels=raw_in // unshuffle ** 2, out_channels=out_channels, features=features,
                      growth=sd["body.0.rdb1.conv1.weight"].shape[0], blocks=blocks, upsamples=upsamples,
                      pixel_shuffle=pixel_shuffle, unshuffle=unshuffle)


def to_old_layout(sd: dict[str, Any], config: RRDBConfig) -> dict[str, Any]:
    """BasicSR-named weights in the ESRGAN repository's ``model.N`` layout (the inverse of ``convert``)."""
    # the old network is one flattened nn.Sequential: conv, trunk, then per x2 stage (resize, conv, act) or
    # (conv, shuffle, act), then (conv, act) and the last conv; the weights sit at the convs' indices
    index, tail = 2, {}
    for i in range(config.upsamples):
        tail[f"conv_up{i + 1}"] = index if config.pixel_shuffle else index + 1
        index += 3
    tail["conv_hr"], tail["conv_last"] = index, index + 2
    out: dict[str, Any] = {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        if m := re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d)", module):
            out[f"model.1.sub.{m.group(1)}.RDB{m.group(2)}.conv{m.group(3)}.0.{param}"] = value
        elif module == "conv_body":
            out[f"model.1.sub.{config.blocks}.{param}"] = value
        elif module == "conv_first":
            out[f"model.0.{param}"] = value
        else:
            out[f"model.{tail[module]}.{param}"] = value
    return out


def to_bsrgan_layout(sd: dict[str, Any]) -> dict[str, Any]:
    """BasicSR-named weights in BSRGAN / RealSR's names (``RRDB_trunk``, ``trunk_conv``, ``upconvN``, ``HRconv``)."""
    out: dict[str, Any] = {}
    for key, value in sd.items():
        key = re.sub(r"^body\.(\d+)\.rdb(\d)\.", r"RRDB_trunk.\1.RDB\2.", key)
        key = re.sub(r"^conv_body\.", "trunk_conv.", key)
        key = re.sub(r"^conv_up(\d+)\.", r"upconv\1.", key)
        out[re.sub(r"^conv_hr\.", "HRconv.", key)] = value
    return out


def make_state_dict(config: RRDBConfig, *, layout: str = "new", seed: int = 0) -> dict[str, torch.Tensor]:  # noqa: A002
    """Random RRDBNet weights (deterministic per seed) in the "new" (BasicSR), "old" (ESRGAN) or "bsrgan" key
    layout."""
    if layout not in ("new", "old", "bsrgan"):
        raise ValueError(f"unknown layout {layout!r}; choose 'new' (conv_first, body.N...), 'old' (model.N...) or "
                         "'bsrgan' (RRDB_trunk.N...)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = RRDBNet(config)
        # small weights keep 23 blocks' activations in range, so random models still give images, not NaN
        for name, p in net.named_parameters():
            p.data.normal_(0.0, 0.02 if name.endswith("weight") else 0.01)
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    # plus an identity path through the image channels: the output is a nearest-neighbour upscale of the input
    # with random detail, so a demo's upscaled picture still shows the picture
    n = min(config.in_channels, config.out_channels, config.features)
    f2 = config.unshuffle ** 2
    for i in range(n):
        sd["conv_first.weight"][i, i * f2, 1, 1] += 1.0  # the top-left sub-pixel of an unshuffled input
        for k in range(config.upsamples):
            w = sd[f"conv_up{k + 1}.weight"]
            for j in range(4 if config.pixel_shuffle else 1):
                w[i * 4 + j if config.pixel_shuffle else i, i, 1, 1] += 1.0
        sd["conv_hr.weight"][i, i, 1, 1] += 1.0
        sd["conv_last.weight"][i, i, 1, 1] += 1.0
    if layout == "bsrgan":
        return to_bsrgan_layout(sd)
    return to_old_layout(sd, config) if layout == "old" else sd
