"""Node schemas from ComfyUI's ``/object_info`` format: parsed input and node specs, and where they come from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ComfykitError
from . import builtin

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})


class InputSpec:
    """One declared input of a node: its type, options and whether it is a widget (a literal value)."""

    __slots__ = ("name", "type", "raw", "required", "options", "choices", "list_combo", "any_value",
                 "is_widget", "has_default", "default")

    def __init__(self, name: str, type: str, raw: Any, required: bool, options: dict | None = None,
                 choices: list | None = None, list_combo: bool = False, any_value: bool = False):
        self.name = name
        self.type = type                  # "INT", "MODEL", ...; "COMBO" for list combos
        self.raw = raw                    # the object_info entry, echoed as ``input_config`` in errors
        self.required = required
        self.options = options or {}
        self.choices = choices            # combo options (V1 list or V3 "options")
        self.list_combo = list_combo      # V1 list combo: ComfyUI checks membership only for these
        self.any_value = any_value        # file combo with no known file list: any string passes
        #: Whether the input takes a literal value (it may still be fed by a link).
        self.is_widget = type in WIDGET_TYPES or choices is not None
        #: Whether a value can be filled in when the user gives none.
        self.has_default = "default" in self.options or bool(choices)
        #: The schema default; for a combo without one, its first option (as ComfyUI's page picks).
        self.default = self.options["default"] if "default" in self.options else (choices[0] if choices else None)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InputSpec) and (self.name, self.raw, self.required) == \
            (other.name, other.raw, other.required)

    def __hash__(self) -> int:
        return hash((self.name, self.required))

    def __repr__(self) -> str:
        return f"InputSpec({self.describe()!r})"

    min = property(lambda self: self.options.get("min"))
    max = property(lambda self: self.options.get("max"))
    step = property(lambda self: self.options.get("step"))
    round = property(lambda self: self.options.get("round"))
    multiline = property(lambda self: bool(self.options.get("multiline")))
    control_after_generate = property(lambda self: bool(self.options.get("control_after_generate")))
    tooltip = property(lambda self: self.options.get("tooltip", ""))

    def describe(self) -> str:
        """One line for help: ``name: TYPE = default [min..max] one of ...``."""
        text = f"{self.name}: {self.type}"
        if not self.is_widget:
            text += " (link" + (")" if self.required else ", optional)")
        else:
            if self.has_default:
                text += f" = {self.default!r}"
            elif self.required:
                text += " (required)"
            if self.min is not None or self.max is not None:
                text += f" [{self.min}..{self.max}]"
            if self.step is not None:
                text += f" step {self.step}"
            if self.choices is not None and not self.any_value:
                shown = ", ".join(repr(c) for c in self.choices[:12])
                more = f", ... ({len(self.choices)} in all)" if len(self.choices) > 12 else ""
                text += f" one of {shown}{more}"
            elif self.any_value:
                text += " (any file name; the backend checks it)"
            if self.control_after_generate:
                text += " (control_after_generate)"
            if not self.required:
                text += " (optional)"
        if self.tooltip:
            text += f"  - {self.tooltip}"
        return text


def parse_input(name: str, raw: Any, required: bool) -> InputSpec:
    """Parse one ``input.required/optional`` entry of object_info."""
    entry = raw if isinstance(raw, (list, tuple)) else [raw]
    first = entry[0] if entry else "*"
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    if isinstance(first, (list, tuple)):
        return InputSpec(name, "COMBO", raw, required, options, list(first), True,
                         bool(options.get(builtin.ANY_FILE)))
    type_ = str(first)
    choices = options.get("options") if type_ == "COMBO" else None
    if type_ == "COMBO" and choices is None:
        choices = []
    return InputSpec(name, type_, raw, required, options, None if choices is None else list(choices))


@dataclass
class NodeSpec:
    """A node class: inputs in ComfyUI's order, outputs, and display data."""

    name: str
    inputs: dict[str, InputSpec]
    hidden: tuple[str, ...]
    outputs: tuple[str, ...]
    output_names: tuple[str, ...]
    output_node: bool
    display_name: str
    category: str
    description: str
    raw: dict

    def __post_init__(self) -> None:
        # (name, default) of the widgets a new node gets when the user leaves them out
        self.defaults = tuple((n, i.default) for n, i in self.inputs.items()
                              if i.is_widget and i.has_default and not i.any_value)
        self.default_of = dict(self.defaults)
        # For fill_defaults: every input in schema order (with its default, or None), and those without a default
        self._template = {n: self.default_of.get(n) for n in self.inputs}
        self._no_default = tuple(n for n in self.inputs if n not in self.default_of)

    def fill_defaults(self, given: dict[str, Any]) -> dict[str, Any]:
        """The inputs ``given`` (declared names only) in schema order, plus the default of each one left out."""
        filled = self._template.copy()
        filled.update(given)
        for name in self._no_default:
            if name not in given:
                del filled[name]
        return filled

    @classmethod
    def parse(cls, name: str, info: dict) -> NodeSpec:
        """Build from one object_info entry."""
        sections = info.get("input") or {}
        order = info.get("input_order") or {}
        inputs: dict[str, InputSpec] = {}
        for section in ("required", "optional"):
            declared = sections.get(section) or {}
            names = [n for n in order.get(section, []) if n in declared]
            names += [n for n in declared if n not in names]
            for n in names:
                inputs[n] = parse_input(n, declared[n], section == "required")
        outputs = tuple(str(t) if not isinstance(t, list) else "COMBO" for t in info.get("output") or ())
        names_ = tuple(info.get("output_name") or outputs)
        return cls(name, inputs, tuple(sections.get("hidden") or ()), outputs, names_,
                   bool(info.get("output_node")), info.get("display_name") or name,
                   info.get("category") or "", info.get("description") or "", info)

    def output_index(self, name: str) -> int | None:
        """Index of an output by exact name, else case-insensitive name, else None."""
        if name in self.output_names:
            return self.output_names.index(name)
        lowered = [n.lower() for n in self.output_names]
        if name.lower() in lowered and lowered.count(name.lower()) == 1:
            return lowered.index(name.lower())
        return None


class Schema:
    """The node classes a backend offers, wrapping an ``/object_info`` dict.

    >>> Schema.builtin()["KSampler"].inputs["steps"].default
    20
    """

    def __init__(self, object_info: dict[str, dict], source: str = "object_info"):
        if not isinstance(object_info, dict):
            raise TypeError(f"schema must be an /object_info dict, got {type(object_info).__name__}")
        self.object_info = object_info
        self.source = source
        self._specs: dict[str, NodeSpec] = {}

    @classmethod
    def builtin(cls, files: dict[str, list[str]] | None = None) -> Schema:
        """The nodes comfykit's engine implements; ``files`` fills the file-name combos."""
        return cls(builtin.object_info(files), "builtin")

    @classmethod
    def load(cls, source: Any = None) -> Schema:
        """A Schema from None (built-in), a Schema, an object_info dict, a JSON path, a URL or a backend."""
        if source is None:
            return cls.builtin()
        if isinstance(source, Schema):
            return source
        if isinstance(source, dict):
            return cls(source)
        if isinstance(source, str) and source.startswith(("http://", "https://")):
            return cls.from_url(source)
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise ComfykitError(f"schema file {str(path)!r} does not exist; pass an /object_info JSON file, "
                                    "a dict, a server URL or a backend")
            return cls(json.loads(path.read_text()), str(path))
        if hasattr(source, "object_info"):
            info = source.object_info()
            return info if isinstance(info, Schema) else cls(info, type(source).__name__)
        raise TypeError(f"cannot make a schema from {type(source).__name__}; pass None, an /object_info dict, "
                        "a JSON file path, an http(s):// URL or an object with .object_info()")

    @classmethod
    def from_url(cls, url: str, timeout: float = 30.0) -> Schema:
        """Fetch ``GET <url>/object_info`` from a running ComfyUI-compatible server."""
        import requests  # only when the user asks for a URL

        base = url.rstrip("/")
        if not base.endswith("/object_info"):
            base += "/object_info"
        try:
            response = requests.get(base, timeout=timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise ComfykitError(f"could not fetch the schema from {base}: {exc}") from exc
        return cls(response.json(), base)

    def __contains__(self, class_type: object) -> bool:
        return class_type in self.object_info

    def __getitem__(self, class_type: str) -> NodeSpec:
        spec = self._specs.get(class_type)
        if spec is None:
            spec = NodeSpec.parse(class_type, self.object_info[class_type])
            self._specs[class_type] = spec
        return spec

    def get(self, class_type: str) -> NodeSpec | None:
        """The spec of a class, or None when the schema lacks it."""
        if class_type not in self.object_info:
            return None
        return self._specs.get(class_type) or self[class_type]

    def names(self) -> list[str]:
        """Every node class name."""
        return list(self.object_info)

    def __len__(self) -> int:
        return len(self.object_info)

    def __repr__(self) -> str:
        return f"Schema({len(self)} nodes from {self.source})"

    def __getstate__(self) -> dict:
        return {"object_info": self.object_info, "source": self.source}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["object_info"], state["source"])


def types_match(received: str, expected: str) -> bool:
    """ComfyUI's link type rule: equal, ``*`` on either side, or comma-separated sets that intersect."""
    if received == expected or received == "*" or expected == "*":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return bool(got & want)
