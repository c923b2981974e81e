"""Form fields for node inputs: the right ipywidget for an input's schema, parsing, and seed control.

Only widgets and options present in both ipywidgets 7.7 (Colab) and 8 (JupyterLab) are used.
"""

from __future__ import annotations

import random
from typing import Any

import ipywidgets as w

from ..errors import ValidationError
from ..sweep import input_ref, node_class, node_id, ref_key, spec_get

#: ComfyUI's control_after_generate choices for seed inputs.
SEED_CONTROLS = ("randomize", "increment", "decrement", "fixed")

# JavaScript numbers lose integers above 2**53, so bigger ranges get a text box parsed in Python.
_JS_SAFE = 2**53
# A slider with more positions than this is too coarse to aim with; a number box is friendlier.
_SLIDER_POSITIONS = 2048

_STYLE = {"description_width": "110px"}


def _is_number_range(lo: Any, hi: Any) -> bool:
    return isinstance(lo, (int, float)) and isinstance(hi, (int, float))


def _decimals(step: float) -> int:
    text = f"{step:.10f}".rstrip("0")
    return max(1, len(text.split(".")[1])) if "." in text else 1


class Field:
    """One node input in the form: its widget, how to read it back, and seed control after generate."""

    def __init__(self, ref: Any, label: str, rng: random.Random, multiline: bool | None = None):
        self.ref = input_ref(ref)
        self.key = ref_key(self.ref)
        self.label = label
        self.rng = rng
        self.control: Any = None  # Dropdown of SEED_CONTROLS for seed-like inputs
        self.dice: Any = None
        self.kind, self.widget = self._make_widget(multiline)
        parts = [self.widget]
        if self._is_seed():
            self.control = w.Dropdown(options=list(SEED_CONTROLS), value="randomize",
                                      layout=w.Layout(width="120px"))
            self.dice = w.Button(description="🎲", layout=w.Layout(width="40px"))
            self.dice.on_click(lambda _b: self.randomize())
            parts += [self.control, self.dice]
        self.box = w.HBox(parts) if len(parts) > 1 else self.widget

    # -- construction ---------------------------------------------------------------------------------------
    def _spec(self, key: str, default: Any = None) -> Any:
        return spec_get(self.ref, key, default)

    def _is_seed(self) -> bool:
        return bool(self._spec("control_after_generate", False)) or self.ref.name in ("seed", "noise_seed")

    def _make_widget(self, multiline: bool | None) -> tuple[str, Any]:
        value = self.ref.value
        if value is None:  # an optional input left unset: start from the schema default
            value = self._spec("default")
        kind = self._spec("type", "")
        choices = self._spec("choices")
        if isinstance(kind, (list, tuple)):
            kind, choices = "COMBO", list(kind)
        common = {"description": self.label, "style": _STYLE}
        if choices:
            options = list(choices)
            if value not in options:  # a file name the schema does not list yet: keep it selectable
                options.insert(0, value)
            return "choice", w.Dropdown(options=options, value=value, layout=w.Layout(width="420px"), **common)
        if kind == "BOOLEAN":
            return "bool", w.Checkbox(value=bool(value), indent=False, **common)
        if kind in ("INT", "FLOAT"):
            return self._number_widget(kind, value, common)
        if multiline if multiline is not None else self._spec("multiline", False):
            return "text", w.Textarea(value=str(value or ""), rows=3, layout=w.Layout(width="95%"), **common)
        return "text", w.Text(value="" if value is None else str(value), layout=w.Layout(width="95%"), **common)

    def _number_widget(self, kind: str, value: Any, common: dict[str, Any]) -> tuple[str, Any]:
        lo, hi = self._spec("min"), self._spec("max")
        step = self._spec("step") or (1 if kind == "INT" else 0.01)
        if kind == "INT" and isinstance(step, float) and step.is_integer():
            step = int(step)
        bounded = _is_number_range(lo, hi)
        if bounded and abs(lo) < _JS_SAFE and abs(hi) < _JS_SAFE and (hi - lo) / step <= _SLIDER_POSITIONS:
            if kind == "INT":
                return "int", w.IntSlider(value=int(value), min=int(lo), max=int(hi), step=int(step),
                                          continuous_update=False, **common)
            return "float", w.FloatSlider(value=float(value), min=float(lo), max=float(hi), step=float(step),
                                          readout_format=f".{_decimals(float(step))}f", continuous_update=False,
                                          **common)
        # big ranges (seed up to 2**64-1, steps up to 10000): a text box, parsed and range-checked on generate
        return ("int" if kind == "INT" else "float"), w.Text(value=str(value), layout=w.Layout(width="300px"),
                                                            **common)

    # -- reading and writing --------------------------------------------------------------------------------
    def read(self) -> Any:
        """The widget's value as the input's type; ValueError naming the field when it is not one."""
        raw = self.widget.value
        if self.kind in ("int", "float") and isinstance(raw, str):
            text = raw.strip().replace("_", "")
            try:
                value: Any = int(text) if self.kind == "int" else float(text)
            except ValueError:
                expected = "a whole number" if self.kind == "int" else "a number"
                raise ValueError(f"{self.label}: {raw!r} is not {expected}") from None
        else:
            value = raw
        if self.kind in ("int", "float"):
            lo, hi = self._spec("min"), self._spec("max")
            if lo is not None and value < lo or hi is not None and value > hi:
                raise ValueError(f"{self.label}: {value} is out of range, use a value from {lo} to {hi}")
        return value

    def apply(self) -> Any:
        """Read the widget and set the node input; ValueError/ValidationError naming the field on bad input."""
        value = self.read()
        try:
            self.ref.set(value)
        except (ValidationError, ValueError, TypeError) as exc:
            raise ValueError(f"{self.label}: {exc}") from None
        return value

    def set_widget(self, value: Any) -> None:
        """Show ``value`` in the widget (as text for text-box numbers)."""
        if self.kind in ("int", "float") and isinstance(self.widget.value, str):
            value = str(value)
        self.widget.value = value

    def randomize(self) -> None:
        lo = int(self._spec("min", 0))
        hi = int(self._spec("max", 2**64 - 1))
        self.set_widget(self.rng.randint(lo, hi))

    def after_generate(self, used: Any) -> None:
        """ComfyUI's control_after_generate: prepare the seed of the next run."""
        if self.control is None or not isinstance(used, int):
            return
        mode = self.control.value
        lo = int(self._spec("min", 0))
        hi = int(self._spec("max", 2**64 - 1))
        if mode == "randomize":
            self.randomize()
        elif mode == "increment":
            self.set_widget(used + 1 if used < hi else lo)
        elif mode == "decrement":
            self.set_widget(used - 1 if used > lo else hi)

    def __repr__(self) -> str:
        return f"Field({self.label!r}, node {self.key[0]} {node_class(self.ref)}.{self.ref.name})"


def default_refs(wf: Any) -> list[Any]:
    """The inputs worth a form field: prompts, sampler settings, image size (in workflow order)."""
    wanted = {
        "CLIPTextEncode": ("text",),
        "KSampler": ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
        "KSamplerAdvanced": ("noise_seed", "steps", "cfg", "sampler_name", "scheduler"),
        "EmptyLatentImage": ("width", "height", "batch_size"),
        "EmptySD3LatentImage": ("width", "height", "batch_size"),
    }
    refs = []
    for ref in wf.inputs():
        names = wanted.get(node_class(ref), ())
        if ref.name in names and not (ref.name == "denoise" and ref.value == 1.0):
            refs.append(ref)
    return refs


def prompt_roles(wf: Any) -> dict[str, str]:
    """{text-encode node id: "positive"/"negative"} from what each encoder feeds in the API prompt."""
    try:
        try:
            prompt = wf.to_api(validate=False)  # a form for a graph that is not valid yet still gets labels
        except TypeError:
            prompt = wf.to_api()
    except Exception:  # an incomplete graph still gets a form, just without the role names
        return {}
    roles: dict[str, str] = {}
    for node in prompt.values():
        for role in ("positive", "negative"):
            link = node.get("inputs", {}).get(role)
            if isinstance(link, list) and len(link) == 2:
                roles.setdefault(str(link[0]), role)
    return roles


def make_labels(refs: list[Any], roles: dict[str, str]) -> list[str]:
    """Readable labels: "positive"/"negative" for prompts, the input name, the node id only when ambiguous."""
    base = []
    for ref in refs:
        role = roles.get(node_id(ref)) if ref.name == "text" else None
        base.append(role or ref.name)
    return [f"{b} #{node_id(r)}" if base.count(b) > 1 else b for b, r in zip(base, refs)]
