"""FLUX.1 ControlNets on diffusers' ``FluxControlNetModel``: residuals for the double and single blocks.

Layouts read (``build_flux_controlnet``):

- "flux-instantx": diffusers-format files (InstantX/FLUX.1-dev-Controlnet-Canny, Shakker-Labs'
  FLUX.1-dev-ControlNet-Union-Pro with ``controlnet_mode_embedder``): the hint is a VAE-encoded latent;
- "flux-xlabs": XLabs-AI's own layout (flux-controlnet-canny/depth/hed-v3: ``double_blocks``, ``controlnet_blocks.N``,
  ``pos_embed_input``, ``input_hint_block``), converted to ``FluxControlNetModel`` with a hint encoder; diffusers'
  conversions of XLabs files (an ``input_hint_block.conv_in``) load as they are.

ComfyUI 0.3.64's semantics (its ``ControlNetFlux``): InstantX hints are resized to the latent x the VAE's downscale,
VAE-encoded and mapped into FLUX.1's latent space (``process_in``: shift then scale), then packed 2x2; XLabs hints
are pixels mapped to -1..1 and encoded by the hint convolutions. A ControlNet of k double blocks steers FLUX.1's 19
double blocks (and its single blocks its 38): InstantX repeats each residual ``ceil(19 / k)`` times in a row, XLabs
cycles the whole list. A union ControlNet gets SetUnionControlNetType's index as its mode token ("auto": none);
ComfyUI passes the index unchanged, so on Union-Pro "openpose" is mode 0 (canny), "depth" mode 1 (tile) and so on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import ModelError
from .dit_common import build_on_meta, config_from_folder, pad_to_patch, per_sample, spread, vae_hint_ratio

#: FLUX.1's block counts: ComfyUI spreads a ControlNet's residuals over these, whatever the model's depth
MAIN_DOUBLE, MAIN_SINGLE = 19, 38
#: ComfyUI's default distilled guidance, which its Flux conds carry even for schnell
DEFAULT_GUIDANCE = 3.5
#: XLabs' hint encoder: conv indices in their nn.Sequential (SiLU between) -> diffusers' ControlNetConditioningEmbedding
_XLABS_HINT = {0: "conv_in", 2: "blocks.0", 4: "blocks.1", 6: "blocks.2", 8: "blocks.3", 10: "blocks.4",
               12: "blocks.5", 14: "conv_out"}
_BFL_TRUNK = ("img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "double_blocks.", "single_blocks.")


def flux_controlnet_layout(sd: dict[str, Any]) -> str | None:
    """"flux-instantx", "flux-xlabs", None (not a FLUX.1 ControlNet), or a ModelError for the variants not read."""
    if "controlnet_blocks.0.linear.weight" in sd:
        raise ModelError("a MistoLine FLUX.1 ControlNet (controlnet_blocks.N.linear): not implemented yet in the "
                         "embedded engine; run this workflow on a ComfyUI server with ck.ComfyServer")
    if "controlnet_mode_embedder.fc.weight" in sd:
        raise ModelError("InstantX's first FLUX.1 union ControlNet (controlnet_mode_embedder.fc), which ComfyUI "
                         "does not load either; use Shakker-Labs' FLUX.1-dev-ControlNet-Union-Pro")
    if "controlnet_x_embedder.weight" in sd:
        return "flux-instantx"
    if "controlnet_blocks.0.weight" in sd and any(k.startswith("double_blocks.") for k in sd):
        return "flux-xlabs"
    return None


# -- keys and config --------------------------------------------------------------------------------------------
def xlabs_to_diffusers(sd: dict[str, Any]) -> dict[str, Any]:
    """An XLabs FLUX.1 ControlNet in ``FluxControlNetModel`` key names (the trunk through diffusers' converter)."""
    from .flux import flux_to_diffusers

    trunk = {k: v for k, v in sd.items() if k.startswith(_BFL_TRUNK)}
    inner = trunk["img_in.weight"].shape[0]
    stand_ins = not any(k.startswith("single_blocks.") for k in trunk)
    if stand_ins:  # the converter wants a single block and a final layer; XLabs files have neither
        meta = {"modulation.lin.weight": (3 * inner, inner), "modulation.lin.bias": (3 * inner,),
                "linear1.weight": (7 * inner, inner), "linear1.bias": (7 * inner,),
                "norm.query_norm.scale": (1,), "norm.key_norm.scale": (1,),
                "linear2.weight": (inner, 5 * inner), "linear2.bias": (inner,)}
        trunk.update({f"single_blocks.0.{k}": torch.empty(s, device="meta") for k, s in meta.items()})
    trunk.update({f"final_layer.{k}": torch.empty(s, device="meta") for k, s in (
        ("linear.weight", (1, inner)), ("linear.bias", (1,)), ("adaLN_modulation.1.weight", (2 * inner, inner)),
        ("adaLN_modulation.1.bias", (2 * inner,)))})
    out = {k: v for k, v in flux_to_diffusers(trunk, consume=True).items()
           if not k.startswith(("proj_out.", "norm_out.")) and not (stand_ins and k.startswith("single_transformer"))}
    for key, value in sd.items():
        module, _, kind = key.rpartition(".")
        if module.startswith(("controlnet_blocks.", "controlnet_single_blocks.")):
            out[key] = value
        elif module == "pos_embed_input":
            out[f"controlnet_x_embedder.{kind}"] = value
        elif module.startswith("input_hint_block."):
            index = int(module.split(".")[1])
            if index not in _XLABS_HINT:
                raise KeyError(key)
            out[f"input_hint_block.{_XLABS_HINT[index]}.{kind}"] = value
        elif not key.startswith(_BFL_TRUNK):
            raise KeyError(f"unknown key {key}")
    return out


def infer_flux_controlnet_config(sd: dict[str, Any]) -> dict[str, Any]:
    """``FluxControlNetModel`` kwargs from diffusers-layout tensor shapes (head width from the q norm, as FLUX.1)."""
    from .flux import flux_trunk_config

    hint = sd.get("input_hint_block.conv_out.weight")
    mode = sd.get("controlnet_mode_embedder.weight")
    return {
        **flux_trunk_config(sd),
        # the hint encoder's features are packed 2x2 like the latent; without one the hint comes packed
        "patch_size": 2 if hint is not None else 1,
        "num_mode": None if mode is None else mode.shape[0],
        "conditioning_embedding_channels": None if hint is None else hint.shape[0],
    }


# -- the network ------------------------------------------------------------------------------------------------
class FluxControlNet(nn.Module):
    """A diffusers ``FluxControlNetModel`` giving ComfyUI's {"input": per double block, "output": per single block}
    residual lists for the FLUX.1 transformer."""

    kind = "flux"

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @property
    def latent_hint(self) -> bool:
        """True for InstantX-style ControlNets (a VAE-encoded hint); False for XLabs' (pixels, own encoder)."""
        return self.net.input_hint_block is None

    @property
    def width(self) -> int:
        """The token width of its blocks (the transformer's)."""
        return self.net.config.num_attention_heads * self.net.config.attention_head_dim

    @property
    def modes(self) -> int:
        """How many control modes a union ControlNet knows (0: not a union)."""
        return self.net.config.num_mode or 0

    def describe(self) -> str:
        """What it is, as far as the shapes say."""
        c = self.net.config
        kind = "an XLabs" if not self.latent_hint else "a union" if self.modes else "an InstantX-style"
        return f"{kind} FLUX.1 ControlNet ({c.num_layers}+{c.num_single_layers} blocks, width {self.width})"

    def check(self, model: Any, name: str) -> None:
        """ModelError unless ``model`` is a FLUX.1 transformer of the same width and text width."""
        from .controlnet import _model_summary

        cfg = model.config
        ok = getattr(model, "arch", "") == "flux" and isinstance(cfg, dict) and (
            cfg["num_attention_heads"] * cfg["attention_head_dim"] == self.width
            and cfg["joint_attention_dim"] == self.net.config.joint_attention_dim)
        if not ok:
            raise ModelError(f"{name}: this is {self.describe()} but the model is {model.arch} "
                             f"({_model_summary(model)}); use a ControlNet made for {model.arch}")

    def hint_ratio(self, vae: Any) -> int:
        """Hint pixels per latent pixel: the VAE's downscale (InstantX encodes the hint) or 8 (XLabs)."""
        if not self.latent_hint:
            return 8
        return vae_hint_ratio(vae)

    def prepare_hint(self, hint: torch.Tensor, control: Any, model: Any) -> torch.Tensor:
        """InstantX: the hint encoded with the apply node's VAE, in FLUX.1's latent space; XLabs: pixels in -1..1."""
        if not self.latent_hint:
            return hint * 2.0 - 1.0
        return model.latent_format.process_in(control.vae.encode(hint.movedim(1, -1)))

    def check_type(self, union_type: int | None, name: str) -> None:
        """At run start: a union ControlNet has SetUnionControlNetType's index among its modes."""
        if union_type is not None and self.modes and union_type >= self.modes:
            raise ValueError(f"this union ControlNet knows {self.modes} control modes (0-{self.modes - 1}) but "
                             f"SetUnionControlNetType chose index {union_type}; pick one of its first {self.modes} "
                             "types")

    def run_options(self, control: Any, inputs: Any) -> dict[str, Any]:
        """What a call needs beyond x, t, hint, context and pooled: the guidance and a union's mode (ComfyUI
        ignores the type on a ControlNet without a mode embedder)."""
        mode = getattr(control, "union_type", None) if self.modes else None
        return {"guidance": getattr(inputs, "guidance", None), "mode": mode}

    def residuals(self, x: torch.Tensor, t: torch.Tensor, hint: torch.Tensor, context: torch.Tensor,
                  pooled: torch.Tensor | None, guidance: torch.Tensor | None = None,
                  mode: int | None = None) -> dict[str, list[torch.Tensor]]:
        """{"input": a residual per FLUX.1 double block (19), "output": per single block (38)}; ``t`` is sigma."""
        from .flux import PATCH, pack

        net = self.net
        dtype, device, b = net.x_embedder.weight.dtype, x.device, x.shape[0]
        img, img_ids = pack(x.to(dtype), ids_dtype=dtype)
        if self.latent_hint:
            cond, _ = pack(hint.to(dtype))
        else:
            features = pad_to_patch(net.input_hint_block(hint.to(dtype)), PATCH)
            cond, _ = pack(features)
        if cond.shape[0] != b:
            cond = cond.expand(b, -1, -1)
        h = net.x_embedder(img) + net.controlnet_x_embedder(cond)
        sigma = per_sample(t, b, device, "sigma").to(dtype)
        pooled = torch.zeros(b, net.config.pooled_projection_dim) if pooled is None else pooled
        pooled = pooled[:, :net.config.pooled_projection_dim].to(device, dtype)
        if net.config.guidance_embeds:
            g = per_sample(DEFAULT_GUIDANCE if guidance is None else guidance, b, device, "guidance").to(dtype)
            temb = net.time_text_embed(sigma * 1000, g * 1000, pooled)
        else:
            temb = net.time_text_embed(sigma * 1000, pooled)
        txt = net.context_embedder(context.to(device, dtype))
        if mode is not None:  # the mode token goes before the text, with the text's (zero) position ids
            token = net.controlnet_mode_embedder(torch.tensor([mode], device=device))
            txt = torch.cat([token[None].expand(b, -1, -1), txt], dim=1)
        ids = torch.cat([torch.zeros(txt.shape[1], 3, device=device, dtype=img_ids.dtype), img_ids], dim=0)
        rotary = net.pos_embed(ids)
        doubles, singles = [], []
        for block, out in zip(net.transformer_blocks, net.controlnet_blocks):
            txt, h = block(hidden_states=h, encoder_hidden_states=txt, temb=temb, image_rotary_emb=rotary)
            doubles.append(out(h))
        for block, out in zip(net.single_transformer_blocks, net.controlnet_single_blocks):
            txt, h = block(hidden_states=h, encoder_hidden_states=txt, temb=temb, image_rotary_emb=rotary)
            singles.append(out(h))
        cycle = not self.latent_hint
        result = {"input": spread(doubles, MAIN_DOUBLE, cycle)}
        if singles:
            result["output"] = spread(singles, MAIN_SINGLE, cycle)
        return result


def build_flux_controlnet(sd: dict[str, Any], layout: str, name: str,
                          folder_config: dict[str, Any] | None = None) -> FluxControlNet:
    """A :class:`FluxControlNet` from an InstantX/diffusers or XLabs state dict (ModelError when it does not fit)."""
    from diffusers import FluxControlNetModel

    try:
        if layout == "flux-xlabs":
            sd = xlabs_to_diffusers(sd)
        config = infer_flux_controlnet_config(sd)
    except (KeyError, IndexError, ValueError) as e:
        raise ModelError(f"{name}: the FLUX.1 ControlNet weights are incomplete or of an unknown variant ({e}); "
                         "re-download the file") from None
    config = config_from_folder(config, folder_config or {})
    hint_in = sd["controlnet_x_embedder.weight"].shape[1]
    if config["conditioning_embedding_channels"] is None and hint_in != config["in_channels"]:
        raise ModelError(f"{name}: a FLUX.1 ControlNet taking {hint_in // 4} hint latent channels (an "
                         "inpainting ControlNet, e.g. AliMama's): not implemented yet in the embedded engine; run "
                         "this workflow on a ComfyUI server with ck.ComfyServer")
    return FluxControlNet(build_on_meta(lambda: FluxControlNetModel(**config), sd, "FLUX.1 ControlNet", name))


def block_samples(values: list | None, blocks: int, zeros: torch.Tensor) -> list[torch.Tensor] | None:
    """ComfyUI's residual list as diffusers' ``controlnet_(single_)block_samples``: one per block of the model
    (``zeros``, [B, image tokens, width], where ComfyUI adds nothing), each padded with zeros to the image tokens
    (Kontext reference tokens get no control, as in ComfyUI, which adds residuals to the first tokens only)."""
    values = list(values or [])
    if not any(v is not None for v in values):
        return None
    like, done, out = zeros, {}, []
    for i in range(blocks):
        v = values[i] if i < len(values) else None
        if v is None:
            out.append(zeros)
            continue
        if id(v) not in done:  # residuals repeated over blocks are one tensor: convert it once
            w = v.to(like.device, like.dtype)
            if w.shape[1] < like.shape[1]:
                w = torch.cat([w, like.new_zeros(w.shape[0], like.shape[1] - w.shape[1], w.shape[2])], dim=1)
            done[id(v)] = w
        out.append(done[id(v)])
    return out
