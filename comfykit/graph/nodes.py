"""The DSL's handles: a built ``Node``, one of its ``Output`` sockets, and an ``InputRef`` to one widget input."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from .schema import InputSpec, NodeSpec

if TYPE_CHECKING:
    from .workflow import Workflow


class Output:
    """One output socket of a node (``ckpt.MODEL``); pass it as an input to link the two nodes."""

    __slots__ = ("node", "index")

    def __init__(self, node: Node, index: int):
        self.node = node
        self.index = index

    @property
    def name(self) -> str:
        """The output's name (``MODEL``)."""
        return self.node.spec.output_names[self.index]

    @property
    def type(self) -> str:
        """The output's type, matched against input types when linking."""
        return self.node.spec.outputs[self.index]

    def to_api(self) -> list:
        """The API-format link ``[node_id, slot]``."""
        return [self.node.id, self.index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Output) and other.node is self.node and other.index == self.index

    def __hash__(self) -> int:
        return hash((self.node.id, self.index))

    def __repr__(self) -> str:
        return f"#{self.node.id}.{self.name}"


class InputRef:
    """A reference to one input of a node (``sampler.steps``): reads and sets the live value, with its spec."""

    __slots__ = ("node", "name")

    def __init__(self, node: Node, name: str):
        self.node = node
        self.name = name

    @property
    def value(self) -> Any:
        """The current value (an ``Output`` when the input is linked)."""
        return self.node._inputs.get(self.name)

    @property
    def spec(self) -> InputSpec:
        """The input's schema: type, default, min, max, step, round, choices, multiline, control_after_generate."""
        return self.node.spec.inputs[self.name]

    def set(self, value: Any) -> None:
        """Set the value, validated like construction."""
        self.node._set_input(self.name, value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, InputRef):
            return other.node is self.node and other.name == self.name
        return self.value == other

    def __hash__(self) -> int:
        return hash((self.node.id, self.name))

    def __int__(self) -> int:
        return int(self.value)

    def __float__(self) -> float:
        return float(self.value)

    def __str__(self) -> str:
        return str(self.value)

    def __bool__(self) -> bool:
        return bool(self.value)

    def __index__(self) -> int:
        if self.spec.type != "INT":
            raise TypeError(f"input '{self.name}' is {self.spec.type}, not INT")
        return int(self.value)

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:
        return repr(self.value)


class Node:
    """A node in a workflow: read outputs (``node.MODEL``, ``node[0]``) and inputs, set inputs by attribute."""

    def __init__(self, workflow: Workflow, node_id: str, spec: NodeSpec, title: str | None = None):
        # __setattr__ is the input setter, so fill the instance dict directly
        attrs = self.__dict__
        attrs["_wf"] = workflow
        attrs["_inputs"] = {}
        attrs["id"] = node_id
        attrs["spec"] = spec
        attrs["title"] = title
        attrs["_extra"] = None  # API-format keys besides class_type and inputs (from_api); a dict when any

    @property
    def class_type(self) -> str:
        """The node class name (``KSampler``)."""
        return self.spec.name

    @property
    def workflow(self) -> Workflow:
        """The workflow holding this node."""
        return self._wf

    @property
    def inputs(self) -> dict[str, Any]:
        """A copy of the set inputs: literal values, or ``Output`` for links."""
        return dict(self._inputs)

    @property
    def outputs(self) -> list[Output]:
        """Every output socket, in order."""
        return [Output(self, i) for i in range(len(self.spec.outputs))]

    def output(self, name_or_index: str | int) -> Output:
        """One output by name (exact or case-insensitive) or index."""
        if isinstance(name_or_index, int):
            count = len(self.spec.outputs)
            if not -count <= name_or_index < count:
                raise IndexError(f"node {self.id} ({self.class_type}) has {count} outputs; "
                                 f"index {name_or_index} is out of range")
            return Output(self, name_or_index % count)
        index = self.spec.output_index(name_or_index)
        if index is None:
            raise KeyError(f"node {self.id} ({self.class_type}) has no output {name_or_index!r}; "
                           f"outputs: {', '.join(self.spec.output_names) or 'none'}")
        return Output(self, index)

    def input(self, name: str) -> Any:
        """One input: an ``InputRef`` for a literal or unset input, the linked ``Output`` for a link."""
        value = self._inputs.get(name)
        if isinstance(value, Output):
            return value
        if name not in self.spec.inputs and name not in self._inputs:
            raise AttributeError(self._unknown(name))
        return InputRef(self, name)

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            return self.output(key)
        if self.spec.output_index(key) is not None:
            return self.output(key)
        return self.input(key)

    def __getattr__(self, name: str) -> Any:
        # Keep copy, pickle and IPython's probes working; "spec"/"id"/"title" only miss on a half-built object.
        if name.startswith("_") or name in ("spec", "id", "title"):
            raise AttributeError(name)
        if name in self.spec.inputs or name in self._inputs:
            return self.input(name)
        if self.spec.output_index(name) is not None:
            return self.output(name)
        raise AttributeError(self._unknown(name))

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or name in ("id", "spec"):
            raise AttributeError(f"cannot set {name!r} on a node")
        if name == "title":
            object.__setattr__(self, "title", None if value is None else str(value))
            return
        self._set_input(name, value)

    def _set_input(self, name: str, value: Any) -> None:
        self._wf._set_input(self, name, value)

    def _unknown(self, name: str) -> str:
        names = list(self.spec.inputs) + list(self.spec.output_names)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (f"node {self.id} ({self.class_type}) has no input or output {name!r}{hint} "
                f"(inputs: {', '.join(self.spec.inputs) or 'none'}; outputs: "
                f"{', '.join(self.spec.output_names) or 'none'})")

    def __dir__(self) -> list[str]:
        own = ["id", "class_type", "inputs", "outputs", "title", "spec", "workflow", "output", "input"]
        return sorted(set(own) | set(self.spec.inputs) | {n for n in self.spec.output_names if n.isidentifier()})

    def __iter__(self):
        """Unpack the outputs: ``model, clip, vae = ckpt``."""
        return iter(self.outputs)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return hash((id(self._wf), self.id))

    def to_api(self) -> dict:
        """This node as API format: ``{"class_type", "inputs", "_meta"?}``."""
        inputs = self._inputs.copy()
        for name, value in inputs.items():
            if value.__class__ is Output:
                inputs[name] = [value.node.id, value.index]  # replacing a value while iterating is allowed
        data: dict[str, Any] = {"inputs": inputs, "class_type": self.spec.name}
        if self._extra:
            data.update(self._extra)
        if self.title is not None:
            data["_meta"] = {**data.get("_meta", {}), "title": self.title}
        elif self._wf.meta_titles:
            data["_meta"] = {**data.get("_meta", {}), "title": self.spec.display_name}
        return data

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self._inputs.items())
        return f"<#{self.id} {self.class_type}({shown})>"

    def __getstate__(self) -> dict:
        return dict(self.__dict__)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
