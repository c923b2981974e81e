"""The builder DSL: a ``Workflow`` of nodes made by calling node-class factories, compiled to API format.

>>> import comfykit as ck
>>> wf = ck.Workflow()
>>> ckpt = wf.CheckpointLoaderSimple(ckpt_name="v1-5-pruned-emaonly.safetensors")
>>> latent = wf.EmptyLatentImage(width=64, height=64)
>>> latent.width
64
"""

from __future__ import annotations

import difflib
import html
import inspect
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ValidationError
from .comfy_nodes import unknown_node_hint
from .nodes import InputRef, Node, Output
from .schema import InputSpec, NodeSpec, Schema, types_match
from .validate import ValidatedPrompt, check_input, describe_errors, find_cycle, validate_prompt

_FAILED = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
           "details": "", "extra_info": {}}


_NUMBER = frozenset({"INT", "FLOAT"})


class UnknownNodeError(ValidationError, AttributeError):
    """A node class the schema does not have (also an AttributeError, so ``hasattr`` works)."""


class Workflow:
    """A ComfyUI graph built in Python; ``wf.KSampler(...)`` adds a node, ``wf.to_api()`` compiles it.

    ``schema`` is None (the built-in nodes of comfykit's engine), an ``/object_info`` dict, a JSON file path,
    an ``http(s)://host:port`` URL or any backend with ``.object_info()``.
    """

    def __init__(self, schema: Any = None, *, meta_titles: bool = False):
        self.schema = Schema.load(schema)
        #: Give every node a ``_meta.title`` in to_api() (its display name unless set), as ComfyUI's page does.
        self.meta_titles = meta_titles
        self._nodes: dict[str, Node] = {}
        self._next_id = 1
        self._factories: dict[str, Callable[..., Node]] = {}
        # True once nodes were loaded or links edited: compile must then re-check everything (values, cycles)
        self._loaded = False

    # ---- building -------------------------------------------------------------------------------------------
    def add(self, class_type: str, /, **inputs: Any) -> Node:
        """Add a node by class name (for names that are not identifiers): ``wf.add("KSampler", seed=1)``."""
        return self._add(class_type, inputs)

    def _add(self, class_type: str, inputs: dict[str, Any]) -> Node:
        """``add`` with the keyword arguments as a dict this call may consume (the factories call it directly)."""
        node_id = inputs.pop("_id", None)
        title = inputs.pop("_title", None)
        spec = self._spec(class_type)
        before = self._next_id
        node_id = self._claim_id(node_id)
        node = Node(self, node_id, spec, title)
        nodes = self._nodes
        nodes[node_id] = node
        given = node._inputs
        declared = spec.inputs
        try:
            for name, value in inputs.items():
                # Fast path for the common cases (a link of the exact type, an in-range number, a listed
                # choice); anything else goes through _set_input, which also builds the error messages.
                ispec = declared.get(name)
                kind = value.__class__
                if kind is Node and len(value.spec.outputs) == 1:
                    value, kind = Output(value, 0), Output
                if ispec is not None:
                    if kind is Output:
                        source = value.node
                        if source._wf is self and nodes.get(source.id) is source \
                                and source.spec.outputs[value.index] == ispec.type:
                            given[name] = value
                            continue
                    elif ispec.type in _NUMBER and (kind is int or (kind is float and ispec.type == "FLOAT")):
                        lo, hi = ispec.options.get("min"), ispec.options.get("max")
                        if (lo is None or value >= lo) and (hi is None or value <= hi):
                            given[name] = float(value) if ispec.type == "FLOAT" else value
                            continue
                    elif kind is str and (ispec.type == "STRING" or (ispec.list_combo and (
                            ispec.any_value or value in ispec.choices))):
                        given[name] = value
                        continue
                self._set_input(node, name, value, new=True)
        except BaseException:
            del nodes[node_id]
            self._next_id = before  # a failed call must not shift the ids of later nodes
            raise
        # Unset widgets take the schema default, as ComfyUI's page fills them in; keep the schema's order.
        object.__setattr__(node, "_inputs", spec.fill_defaults(given))
        return node

    def _spec(self, class_type: str) -> NodeSpec:
        spec = self.schema._specs.get(class_type) or self.schema.get(class_type)
        if spec is None:
            hint = f"; {h}" if (h := unknown_node_hint(class_type, self.schema.names())) else ""
            error = {"type": "invalid_prompt", "message": f"Cannot execute because node {class_type} does not exist.",
                     "details": "", "extra_info": {}}
            raise UnknownNodeError(f"unknown node class {class_type!r} in {self.schema!r}{hint}", error, {})
        return spec

    def _claim_id(self, node_id: Any) -> str:
        nodes = self._nodes
        if node_id is None:
            next_id = self._next_id
            node_id = str(next_id)
            while node_id in nodes:
                next_id += 1
                node_id = str(next_id)
            self._next_id = next_id + 1
            return node_id
        node_id = str(node_id)
        if node_id in nodes:
            raise ValueError(f"node id {node_id!r} is already used by {nodes[node_id]!r}")
        if node_id.isdigit():
            self._next_id = max(self._next_id, int(node_id) + 1)
        self._loaded = True  # ids chosen by the caller: links may form cycles, check them at compile
        return node_id

    def _unknown_input(self, node: Node, name: str) -> str:
        close = difflib.get_close_matches(name, list(node.spec.inputs), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (f"node {node.id} ({node.class_type}) has no input {name!r}{hint} "
                f"(inputs: {', '.join(node.spec.inputs) or 'none'})")

    def _error(self, node: Node, message: str, err: dict | None = None) -> ValidationError:
        if err is None:
            return ValidationError(message, {"type": "invalid_prompt", "message": message, "details": "",
                                             "extra_info": {}}, {})
        node_errors = {node.id: {"errors": [err], "dependent_outputs": [], "class_type": node.class_type}}
        return ValidationError(message, dict(_FAILED), node_errors)

    def _set_input(self, node: Node, name: str, value: Any, new: bool = False) -> None:
        """Validate and store one input (construction and edits share this)."""
        if not new and node.id not in self._nodes:
            raise ValueError(f"node {node.id} ({node.class_type}) was removed from the workflow")
        ispec = node.spec.inputs.get(name)
        if ispec is None:
            if node.spec.output_index(name) is not None:
                raise AttributeError(f"{name!r} is an output of node {node.id} ({node.class_type}); "
                                     "outputs cannot be set, link them into another node's input instead")
            raise self._error(node, self._unknown_input(node, name))
        if isinstance(value, InputRef):
            value = value.value
        if isinstance(value, Node):
            value = self._single_output(value, node, ispec)
        if value is None and not ispec.required:
            node._inputs.pop(name, None)
            return
        if isinstance(value, Output):
            self._check_link(node, ispec, value)
            if not new:
                self._loaded = True  # an edited link may close a cycle
        else:
            value = self._check_literal(node, ispec, value)
        node._inputs[name] = value

    def _single_output(self, source: Node, node: Node, ispec: InputSpec) -> Output:
        if len(source.spec.outputs) == 1:
            return Output(source, 0)
        options = ", ".join(f"#{source.id}.{n}" for n in source.spec.output_names) or "none"
        raise self._error(node, f"node {node.id} ({node.class_type}) input '{ispec.name}': node {source.id} "
                          f"({source.class_type}) has {len(source.spec.outputs)} outputs; pick one: {options}")

    def _check_link(self, node: Node, ispec: InputSpec, out: Output) -> None:
        if out.node._wf is not self or self._nodes.get(out.node.id) is not out.node:
            raise self._error(node, f"node {node.id} ({node.class_type}) input '{ispec.name}': {out!r} belongs to "
                              "another workflow or was removed; link outputs of this workflow's nodes")
        if not types_match(out.type, ispec.type):
            err = {"type": "return_type_mismatch", "message": "Return type mismatch between linked nodes",
                   "details": f"{ispec.name}, received_type({out.type}) mismatch input_type({ispec.type})",
                   "extra_info": {"input_name": ispec.name, "input_config": ispec.raw, "received_type": out.type,
                                  "linked_node": out.to_api()}}
            wanted = [f"#{n.id}.{o}" for n in self._nodes.values() if n is not node
                      for o, t in zip(n.spec.output_names, n.spec.outputs) if types_match(t, ispec.type)][:3]
            hint = f"; outputs of that type here: {', '.join(wanted)}" if wanted else ""
            raise self._error(node, f"node {node.id} ({node.class_type}) input '{ispec.name}' takes {ispec.type}, "
                              f"but {out!r} is {out.type}{hint}", err)

    def _check_literal(self, node: Node, ispec: InputSpec, value: Any) -> Any:
        def where() -> str:
            return f"node {node.id} ({node.class_type}) input '{ispec.name}'"

        if not ispec.is_widget:
            raise self._error(node, f"{where()} takes a link to a {ispec.type} output, got {value!r}; pass an "
                              f"output such as other_node.{ispec.type}")
        # Stricter than ComfyUI where its coercion would silently change the meaning.
        if ispec.type == "BOOLEAN" and isinstance(value, str):
            raise self._error(node, f"{where()} takes True or False, got the string {value!r}")
        if ispec.type == "INT" and isinstance(value, float) and not value.is_integer():
            raise self._error(node, f"{where()} takes a whole number, got {value!r}")
        new, err = check_input(node.class_type, ispec, value)
        if err is None and ispec.choices is not None and not ispec.list_combo and ispec.choices \
                and new not in ispec.choices:
            err = {"type": "value_not_in_list", "message": "Value not in list",
                   "details": f"{ispec.name}: '{new}' not in {ispec.choices}",
                   "extra_info": {"input_name": ispec.name, "input_config": ispec.raw, "received_value": new}}
        if err is not None:
            node_errors = {node.id: {"errors": [err], "dependent_outputs": [], "class_type": node.class_type}}
            raise ValidationError(describe_errors(_FAILED, node_errors, self.schema).split("\n", 1)[1].strip(),
                                  dict(_FAILED), node_errors)
        return new

    def _factory(self, class_type: str) -> Callable[..., Node]:
        factory = self._factories.get(class_type)
        if factory is not None:
            return factory
        spec = self._spec(class_type)

        def factory(**inputs: Any) -> Node:
            return self._add(class_type, inputs)

        params = []
        for name, ispec in spec.inputs.items():
            if not name.isidentifier():
                continue
            if ispec.is_widget and ispec.has_default and not ispec.any_value:
                default = ispec.default
            elif not ispec.required:
                default = None
            else:
                default = inspect.Parameter.empty
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=ispec.type))
        factory.__signature__ = inspect.Signature(params, return_annotation=Node)  # type: ignore[attr-defined]
        factory.__name__ = factory.__qualname__ = class_type if class_type.isidentifier() else "node"
        factory.__doc__ = node_doc(spec)
        self._factories[class_type] = factory
        return factory

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # keep copy, pickle and IPython's probes working
            raise AttributeError(name)
        factory = self._factory(name)
        if name.isidentifier():
            object.__setattr__(self, name, factory)  # later lookups skip __getattr__
        return factory

    def __dir__(self) -> list[str]:
        return sorted(set(object.__dir__(self)) | {n for n in self.schema.names() if n.isidentifier()})

    # ---- reading and editing --------------------------------------------------------------------------------
    def __getitem__(self, node_id: str | int) -> Node:
        try:
            return self._nodes[str(node_id)]
        except KeyError:
            raise KeyError(f"no node with id {str(node_id)!r}; ids: {', '.join(self._nodes) or 'none'}") from None

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Node):
            return self._nodes.get(item.id) is item
        return str(item) in self._nodes

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes.values()))

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def nodes(self) -> list[Node]:
        """Every node, in id order of creation."""
        return list(self._nodes.values())

    @property
    def outputs(self) -> list[Node]:
        """The output nodes (SaveImage, PreviewImage, ...)."""
        return [n for n in self._nodes.values() if n.spec.output_node]

    def remove(self, node: Node | str) -> None:
        """Remove a node; inputs that were linked to it become unset (a required one fails at compile)."""
        node = node if isinstance(node, Node) else self[node]
        if self._nodes.get(node.id) is not node:
            raise ValueError(f"node {node.id} ({node.class_type}) is not in this workflow")
        del self._nodes[node.id]
        for other in self._nodes.values():
            for name, value in list(other._inputs.items()):
                if isinstance(value, Output) and value.node is node:
                    del other._inputs[name]

    def inputs(self) -> list[InputRef]:
        """Every widget input not fed by a link, as InputRefs (for forms, sweeps and widgets)."""
        return [InputRef(n, name) for n in self._nodes.values() for name, ispec in n.spec.inputs.items()
                if ispec.is_widget and not isinstance(n._inputs.get(name), Output)]

    # ---- compiling ------------------------------------------------------------------------------------------
    def to_api(self, validate: bool = True) -> dict[str, dict]:
        """The API-format prompt ``{id: {"class_type", "inputs", "_meta"?}}``; validated unless told not to."""
        prompt = {node_id: node.to_api() for node_id, node in self._nodes.items()}
        if validate:
            self._validate(prompt)
        return prompt

    def validate(self) -> ValidatedPrompt:
        """Check the whole graph as ComfyUI would, plus missing inputs anywhere and cycles; raise ValidationError."""
        return self._validate(self.to_api(validate=False))

    def _validate(self, prompt: dict) -> ValidatedPrompt:
        missing: dict[str, dict] = {}
        outputs = []
        for node in self._nodes.values():
            spec = node.spec
            if spec.output_node:
                outputs.append(node.id)
            if len(node._inputs) < len(spec.inputs):
                errs = [{"type": "required_input_missing", "message": "Required input is missing",
                         "details": name, "extra_info": {"input_name": name}}
                        for name, ispec in spec.inputs.items() if ispec.required and name not in node._inputs]
                if errs:
                    missing[node.id] = {"errors": errs, "dependent_outputs": [], "class_type": node.class_type}
        if missing:
            raise ValidationError(describe_errors(_FAILED, missing, self.schema), dict(_FAILED), missing)
        cycle = find_cycle(prompt) if self._loaded else None
        if cycle:
            path = " -> ".join(f"#{i} {self._nodes[i].class_type}" for i in cycle)
            message = f"the workflow has a cycle: {path}; a node cannot depend on its own output"
            raise ValidationError(message, {"type": "invalid_prompt", "message": message, "details": "",
                                            "extra_info": {}}, {})
        if not self._loaded and outputs:
            # Every value and link was checked and coerced when it was set, and links only point back to
            # older nodes: what ComfyUI would check again is already known to pass.
            return ValidatedPrompt(prompt, outputs, {})
        result = validate_prompt(prompt, self.schema)
        if result.node_errors:
            raise ValidationError(describe_errors(_FAILED, result.node_errors, self.schema), dict(_FAILED),
                                  result.node_errors)
        return result

    # ---- loading and saving ---------------------------------------------------------------------------------
    @classmethod
    def from_api(cls, prompt: dict | str | Path, schema: Any = None) -> Workflow:
        """An editable workflow from an API-format prompt (dict or JSON path); ``to_api()`` gives it back."""
        prompt = _read_json(prompt)
        wf = cls(schema)
        for node_id, data in prompt.items():
            if not isinstance(data, dict) or "class_type" not in data:
                raise ValidationError(f"node {node_id!r} has no class_type; is this an API-format prompt?")
            meta = dict(data.get("_meta") or {})
            node = wf.add(data["class_type"], _id=node_id, _title=meta.pop("title", None))
            node._inputs.clear()
            extra = {k: v for k, v in data.items() if k not in ("class_type", "inputs", "_meta")}
            if meta:
                extra["_meta"] = meta
            if extra:
                object.__setattr__(node, "_extra", extra)
        # A prompt exported by the page titles every node; keep only the titles a person changed.
        if wf._nodes and all(node.title is not None for node in wf._nodes.values()):
            wf.meta_titles = True
            for node in wf._nodes.values():
                if node.title == node.spec.display_name:
                    object.__setattr__(node, "title", None)
        for node_id, data in prompt.items():
            node = wf._nodes[str(node_id)]
            for name, value in (data.get("inputs") or {}).items():
                if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) \
                        and not isinstance(value[1], bool):
                    source = wf._nodes.get(str(value[0]))
                    if source is None or not 0 <= value[1] < len(source.spec.outputs):
                        raise ValidationError(f"node {node_id} ({node.class_type}) input '{name}' links to "
                                              f"{value!r}, which does not exist in the prompt")
                    value = Output(source, value[1])
                node._inputs[name] = value
        return wf

    @classmethod
    def from_ui(cls, workflow: dict | str | Path, schema: Any = None) -> Workflow:
        """An editable workflow from the UI format the ComfyUI page saves (version 0.4 or 1)."""
        from .ui import ui_to_api

        wf = cls(schema)
        return cls.from_api(ui_to_api(_read_json(workflow), wf.schema), wf.schema)

    @classmethod
    def load(cls, source: dict | str | Path, schema: Any = None) -> Workflow:
        """Load an API-format prompt or a UI-format workflow, detecting which."""
        data = _read_json(source)
        if isinstance(data.get("nodes"), list):
            return cls.from_ui(data, schema)
        if isinstance(data.get("prompt"), dict) and "class_type" not in data["prompt"]:
            data = data["prompt"]  # a POST /prompt body
        return cls.from_api(data, schema)

    def diff(self, other: Workflow | dict) -> list[str]:
        """What changed from ``other`` to this workflow, one line per node added/removed or input changed.

        >>> new.diff(old)  # doctest: +SKIP
        ['~ #5 KSampler.steps: 20 -> 30', '+ #8 PreviewImage']
        """
        from .diff import diff_prompts

        before = other.to_api(validate=False) if isinstance(other, Workflow) else other
        return diff_prompts(before, self.to_api(validate=False))

    def save(self, path: str | Path) -> Path:
        """Write the API-format prompt to a JSON file."""
        path = Path(path)
        path.write_text(json.dumps(self.to_api(validate=False), indent=2))
        return path

    def to_ui(self) -> dict[str, Any]:
        """The UI format the ComfyUI page loads (version 0.4), laid out left to right by data flow."""
        from .ui_export import to_ui

        return to_ui(self)

    def to_python(self, name: str = "wf") -> str:
        """DSL source that rebuilds this graph (same ids, inputs and titles)."""
        from .codegen import to_python

        return to_python(self, name)

    # ---- display --------------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        if not self._nodes:
            return f"Workflow(<empty>, {self.schema!r})"
        from .codegen import to_python

        return to_python(self, "wf", header=False)

    def _repr_html_(self) -> str:
        rows = []
        for node in self._nodes.values():
            cells = []
            for name, value in node._inputs.items():
                shown = repr(value) if isinstance(value, Output) else repr(value)
                if len(shown) > 60:
                    shown = shown[:57] + "..."
                cells.append(f"<b>{html.escape(name)}</b>={html.escape(shown)}")
            title = f" <i>{html.escape(node.title)}</i>" if node.title else ""
            rows.append(f"<tr><td>#{html.escape(node.id)}</td><td>{html.escape(node.class_type)}{title}</td>"
                        f"<td style='text-align:left'>{', '.join(cells)}</td></tr>")
        return ("<table><thead><tr><th>id</th><th>class</th><th>inputs</th></tr></thead><tbody>"
                + "".join(rows) + "</tbody></table>")

    def __getstate__(self) -> dict:
        return {"schema": self.schema, "_nodes": self._nodes, "_next_id": self._next_id, "_loaded": self._loaded,
                "meta_titles": self.meta_titles}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._factories = {}


def node_doc(spec: NodeSpec) -> str:
    """The help text of a node factory: inputs with types, defaults, ranges and choices; outputs."""
    lines = [f"{spec.display_name} ({spec.name}), category {spec.category or '-'}."]
    if spec.description:
        lines += ["", spec.description]
    lines += ["", "Inputs (keyword-only; widgets left out take their default, as ComfyUI's page does):"]
    lines += [f"    {ispec.describe()}" for ispec in spec.inputs.values()] or ["    none"]
    lines += ["", "Outputs (node.NAME, node[i]; a node with one output can be passed directly):"]
    lines += [f"    {name}: {type_}" for name, type_ in zip(spec.output_names, spec.outputs)] or ["    none"]
    if spec.output_node:
        lines += ["", "This is an output node."]
    return "\n".join(lines)


def _read_json(source: dict | str | Path) -> dict:
    if isinstance(source, dict):
        return source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"workflow file {str(path)!r} does not exist")
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValidationError(f"{path} does not hold a workflow (expected a JSON object)")
    return data
