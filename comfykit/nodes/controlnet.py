"""ControlNet nodes: load a ControlNet, apply it with a hint image to conditioning, stack several.

An apply node puts a CONTROL_NET (``comfykit.engine.models.controlnet.ControlNet``) on each conditioning entry's
``control`` option, on top of the one already there (ComfyUI chains them; their residuals add up). The hint image
is resized to the latent when the sampler runs.
"""

from __future__ import annotations

from typing import Any

from .base import COMBO, FILES, FLOAT, LINK, Node

UNION_TYPES = ("auto", "openpose", "depth", "hed/pidi/scribble/ted", "canny/lineart/anime_lineart/mlsd", "normal",
               "segment", "tile", "repaint")
_STRENGTH = FLOAT(1.0, 0.0, 10.0, 0.01, "How strongly the ControlNet steers (its residuals are scaled by this).")
_START = FLOAT(0.0, 0.0, 1.0, 0.001, "Fraction of the sampling where the ControlNet starts.")
_END = FLOAT(1.0, 0.0, 1.0, 0.001, "Fraction of the sampling where the ControlNet stops.")


class ControlNetLoader(Node):
    """Loads a ControlNet (original .pth/.safetensors, diffusers, SD3.5) from models/controlnet."""

    DISPLAY, CATEGORY = "Load ControlNet Model", "loaders"
    INPUTS = {"control_net_name": FILES("controlnet", "ControlNet file to load.")}
    OUTPUTS = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"

    def load_controlnet(self, control_net_name: str) -> tuple[Any]:
        path = self.engine.folders.get_full_path("controlnet", control_net_name)
        return (self.engine.models.load_controlnet(path),)


class DiffControlNetLoader(Node):
    """Loads a ControlNet; a "diff" ControlNet's weights are added to the model's."""

    DISPLAY, CATEGORY = "Load ControlNet Model (diff)", "loaders"
    INPUTS = {"model": LINK("MODEL", "The model a diff ControlNet was made from."),
              "control_net_name": FILES("controlnet", "ControlNet file to load.")}
    OUTPUTS = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"

    def load_controlnet(self, model: Any, control_net_name: str) -> tuple[Any]:
        path = self.engine.folders.get_full_path("controlnet", control_net_name)
        return (self.engine.models.load_controlnet(path, model=model),)


def apply_controlnet(conditionings: list[list], control_net: Any, image: Any, strength: float,
                     percent: tuple[float, float] = (0.0, 1.0), vae: Any = None,
                     apply_to_uncond: bool = False) -> list[list]:
    """Each conditioning with ``control_net`` applied on every entry, stacked on the entry's ControlNet.

    Entries that had the same ControlNet get the same new one, so positive and negative still batch together.
    """
    hint = image.movedim(-1, 1)
    made: dict[int, Any] = {}
    out = []
    for conditioning in conditionings:
        entries = []
        for cond, options in conditioning:
            previous = options.get("control")
            key = id(previous)
            if key not in made:
                made[key] = control_net.with_hint(hint, strength, percent, vae=vae, previous=previous)
            entries.append([cond, {**options, "control": made[key], "control_apply_to_uncond": apply_to_uncond}])
        out.append(entries)
    return out


class ControlNetApply(Node):
    """Applies a ControlNet to one conditioning (the old node; the negative side gets it too when it has none)."""

    DISPLAY, CATEGORY = "Apply ControlNet (OLD)", "conditioning/controlnet"
    INPUTS = {"conditioning": LINK("CONDITIONING"), "control_net": LINK("CONTROL_NET"), "image": LINK("IMAGE"),
              "strength": _STRENGTH}
    OUTPUTS = ("CONDITIONING",)
    FUNCTION = "apply_controlnet"

    def apply_controlnet(self, conditioning: list, control_net: Any, image: Any, strength: float) -> tuple[list]:
        if strength == 0:
            return (conditioning,)
        # each entry stacks on its own ControlNet, as ComfyUI's old node does
        out = [apply_controlnet([[entry]], control_net, image, strength, apply_to_uncond=True)[0][0]
               for entry in conditioning]
        return (out,)


class ControlNetApplyAdvanced(Node):
    """Applies a ControlNet to positive and negative conditioning over a part of the sampling."""

    DISPLAY, CATEGORY = "Apply ControlNet", "conditioning/controlnet"
    INPUTS = {"positive": LINK("CONDITIONING"), "negative": LINK("CONDITIONING"),
              "control_net": LINK("CONTROL_NET"), "image": LINK("IMAGE"), "strength": _STRENGTH,
              "start_percent": _START, "end_percent": _END}
    OPTIONAL = {"vae": LINK("VAE", "VAE for ControlNets that take a latent hint (SD3.5).")}
    OUTPUTS = ("CONDITIONING", "CONDITIONING")
    OUTPUT_NAMES = ("positive", "negative")
    FUNCTION = "apply_controlnet"

    def apply_controlnet(self, positive: list, negative: list, control_net: Any, image: Any, strength: float,
                         start_percent: float, end_percent: float, vae: Any = None) -> tuple[list, list]:
        if strength == 0:
            return (positive, negative)
        pos, neg = apply_controlnet([positive, negative], control_net, image, strength,
                                    (start_percent, end_percent), vae)
        return (pos, neg)


class ControlNetApplySD3(ControlNetApplyAdvanced):
    """Applies an SD3/SD3.5 ControlNet (its hint is encoded with the VAE) to positive and negative conditioning."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "Apply Controlnet with VAE", "conditioning/controlnet", \
        "comfy_extras.nodes_sd3"
    INPUTS = {"positive": LINK("CONDITIONING"), "negative": LINK("CONDITIONING"),
              "control_net": LINK("CONTROL_NET"), "vae": LINK("VAE"), "image": LINK("IMAGE"),
              "strength": _STRENGTH, "start_percent": _START, "end_percent": _END}
    OPTIONAL = {}
    FUNCTION = "apply_controlnet"

    def apply_controlnet(self, positive: list, negative: list, control_net: Any,  # type: ignore[override]
                         vae: Any, image: Any, strength: float, start_percent: float,
                         end_percent: float) -> tuple[list, list]:
        return super().apply_controlnet(positive, negative, control_net, image, strength, start_percent,
                                        end_percent, vae)


class SetUnionControlNetType(Node):
    """Sets which control a union ControlNet (ControlNet++ / ProMax) reads its hint as."""

    DISPLAY, CATEGORY, PYTHON_MODULE = "SetUnionControlNetType", "conditioning/controlnet", \
        "comfy_extras.nodes_controlnet"
    INPUTS = {"control_net": LINK("CONTROL_NET"), "type": COMBO(UNION_TYPES)}
    OUTPUTS = ("CONTROL_NET",)
    FUNCTION = "set_controlnet_type"

    def set_controlnet_type(self, control_net: Any, type: str) -> tuple[Any]:  # noqa: A002
        index = UNION_TYPES.index(type) - 1
        return (control_net.with_union_type(index if index >= 0 else None),)
