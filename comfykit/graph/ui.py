"""UI-format workflows (what the ComfyUI page saves: ``nodes`` + ``links``, version 0.4 or 1) -> API format.

Re-implements, from the formats alone, what the page does when it queues a prompt: widget values in input
order (with the hidden ``control_after_generate`` slot), links through Reroutes and bypassed nodes, PrimitiveNode
values pushed into the widgets they feed, muted nodes dropped, subgraph instances flattened.
"""

from __future__ import annotations

from typing import Any

from ..errors import ValidationError
from .comfy_nodes import unknown_node_hint
from .schema import Schema
from .subgraphs import OVERRIDES, flatten, link_table

REROUTES = frozenset({"Reroute", "Reroute (rgthree)"})
# Nodes that exist only in the page (they never reach the server).
VIRTUAL = REROUTES | {"PrimitiveNode", "Note", "MarkdownNote", "SetNode", "GetNode", "Label (rgthree)",
                      "Fast Groups Bypasser (rgthree)", "Fast Groups Muter (rgthree)", "Bookmark (rgthree)",
                      "Fast Bypasser (rgthree)", "Fast Muter (rgthree)"}
MUTED, BYPASS = 2, 4
_CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})


def _resolve(link_id: Any, links: dict, nodes: dict) -> tuple | None:
    """Follow a link through Reroutes and bypassed nodes: ("link", id, slot), ("value", v) or None."""
    seen: set = set()
    while link_id is not None and link_id not in seen:
        seen.add(link_id)
        if link_id not in links:
            return None
        origin_id, slot, _, _, _ = links[link_id]
        origin = nodes.get(origin_id)
        if origin is None:
            return None
        kind, mode = origin.get("type"), origin.get("mode", 0)
        if kind in REROUTES:
            link_id = next((i.get("link") for i in origin.get("inputs") or []), None)
            continue
        if kind == "GetNode":  # KJNodes: a GetNode outputs what the SetNode of the same name receives
            name = (origin.get("widgets_values") or [None])[0]
            setter = next((n for n in nodes.values() if n.get("type") == "SetNode"
                           and (n.get("widgets_values") or [None])[0] == name), None)
            link_id = next((i.get("link") for i in (setter or {}).get("inputs") or []), None)
            continue
        if kind == "PrimitiveNode":
            values = origin.get("widgets_values") or []
            return ("value", values[0]) if values else None
        if mode == MUTED:
            return None
        if mode == BYPASS:
            link_id = _bypass_input(origin, slot)
            continue
        return ("link", origin_id, slot)
    return None


def _bypass_input(node: dict, slot: int) -> int | None:
    """The input a bypassed node passes to its output ``slot``: same index if the type fits, else first of the type."""
    outputs = node.get("outputs") or []
    wanted = outputs[slot].get("type") if slot < len(outputs) else None
    inputs = node.get("inputs") or []
    if slot < len(inputs) and inputs[slot].get("type") == wanted and inputs[slot].get("link") is not None:
        return inputs[slot]["link"]
    for entry in inputs:
        if entry.get("type") == wanted and entry.get("link") is not None:
            return entry["link"]
    return None


def _wrap(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


def _fits(ispec: Any, value: Any) -> bool:
    """Whether a saved widget value can belong to this widget slot at all (to spot shifted values)."""
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]
    kind = ispec.type
    if kind in ("INT", "FLOAT"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "BOOLEAN":
        return isinstance(value, bool)
    if kind == "STRING":
        return isinstance(value, str)
    if any(ispec.options.get(k) for k in ("folder", *_UPLOAD_KEYS)):
        return isinstance(value, str)  # a file list is the files one server has: any name fits the slot
    if ispec.choices is not None and ispec.list_combo and not ispec.any_value and ispec.choices:
        return value in ispec.choices
    return True


#: Options that give an input an upload button on ComfyUI's page, and the values the page saves for the button
_UPLOAD_KEYS = ("image_upload", "video_upload", "audio_upload")
_UPLOAD_VALUES = ("image", "video", "audio", "upload")


def _widget_inputs(node: dict, spec: Any, node_id: str = "?") -> dict[str, Any]:
    names = [n for n, i in spec.inputs.items() if i.is_widget and not i.options.get("forceInput")]
    values = node.get("widgets_values")
    inputs: dict[str, Any] = {}
    if isinstance(values, dict):
        inputs = {n: _wrap(values[n]) for n in names if n in values}
    else:
        values = list(values or [])
        pos = 0
        for name in names:
            if pos >= len(values):
                break
            inputs[name] = _wrap(values[pos])
            pos += 1
            ispec = spec.inputs[name]
            # The page stores the value of an upload button ("image") right after the file it picks.
            if (any(ispec.options.get(k) for k in _UPLOAD_KEYS) and pos < len(values)
                    and values[pos] in _UPLOAD_VALUES):
                pos += 1
                continue
            # The page stores a "control after generate" choice right after seed-like widgets.
            if ispec.control_after_generate or (
                    ispec.type == "INT" and name in ("seed", "noise_seed") and pos < len(values)
                    and values[pos] in _CONTROL_VALUES):
                pos += 1
        if values and (pos != len(values) or len(inputs) != len(names)):
            _check_shift(node, spec, node_id, inputs, len(values), len(names))
    # Widgets the saved node has no value for (saved without widgets_values, or by an older version of the
    # node) take the schema default, as the page fills them in when it loads the workflow.
    for name in names:
        if name not in inputs and spec.inputs[name].has_default:
            inputs[name] = _wrap(spec.inputs[name].default)
    return inputs


def _check_shift(node: dict, spec: Any, node_id: str, inputs: dict[str, Any], saved: int, slots: int) -> None:
    """Refuse, naming the node, widget values that were saved for another version of the node and now sit in
    slots they cannot fill; a count mismatch whose values all still fit passes (missing ones get defaults)."""
    links = {(e.get("widget") or {}).get("name") or e.get("name") for e in node.get("inputs") or []
             if e.get("link") is not None}
    bad = [(name, value) for name, value in inputs.items()
           if name not in links and not _fits(spec.inputs[name], value)]
    if not bad:
        return
    name, value = bad[0]
    value = value["__value__"] if isinstance(value, dict) and "__value__" in value else value
    raise ValidationError(
        f"UI node {node_id} ({node.get('type')}) has {saved} widget values but this schema's {node.get('type')} "
        f"has {slots} widgets, so the values do not line up ({value!r} would go into {name!r}, a "
        f"{spec.inputs[name].type}): the workflow was saved with another version of this node. Open it in a "
        "ComfyUI that matches the server and save it again, or set that node's inputs by hand",
        {"type": "invalid_prompt", "message": f"Widget values of node {node_id} do not match its schema",
         "details": f"Node ID '#{node_id}'", "extra_info": {}}, {})


def ui_to_api(data: dict, schema: Schema) -> dict[str, dict]:
    """Convert a UI-format workflow dict to an API-format prompt using ``schema`` for the widget order."""
    if not isinstance(data.get("nodes"), list):
        raise ValidationError("not a UI-format workflow: it has no 'nodes' list")
    definitions = {s.get("id"): s for s in (data.get("definitions") or {}).get("subgraphs") or []}
    nodes = {str(n["id"]): n for n in data["nodes"]}
    links = link_table(data.get("links") or [])
    if definitions:
        nodes = {k: dict(v) for k, v in nodes.items()}  # flattening edits node dicts; leave the caller's alone
        flatten(nodes, links, definitions)
    prompt: dict[str, dict] = {}
    for node_id in sorted(nodes, key=lambda i: (not i.isdigit(), int(i) if i.isdigit() else 0, i)):
        node = nodes[node_id]
        kind = node.get("type")
        if kind in VIRTUAL or node.get("mode", 0) in (MUTED, BYPASS):
            continue
        spec = schema.get(kind)
        if spec is None and str(kind).startswith(("workflow>", "workflow/")):
            raise ValidationError(f"UI node {node_id} is a group node ({kind}); group nodes are not supported yet: "
                                  "convert it to nodes in ComfyUI first")
        if spec is None:
            message = f"Cannot execute because node {kind} does not exist."
            hint = unknown_node_hint(str(kind), schema.names())
            raise ValidationError(f"UI node {node_id}: unknown node class {kind!r} in {schema!r}; "
                                  + (f"{hint}; " if hint else "") + "load the workflow with the schema of the "
                                  "server that has it (Workflow.from_ui(x, schema=url_or_backend))",
                                  {"type": "invalid_prompt", "message": message, "details": f"Node ID '#{node_id}'",
                                   "extra_info": {}}, {})
        inputs = _widget_inputs(node, spec, node_id)
        for name, value in (node.get(OVERRIDES) or {}).items():
            if name in spec.inputs:
                inputs[name] = _wrap(value)
        for entry in node.get("inputs") or []:
            if entry.get("link") is None:
                continue
            name = (entry.get("widget") or {}).get("name") or entry.get("name")
            target = _resolve(entry["link"], links, nodes)
            if target is None:
                if not (name in spec.inputs and spec.inputs[name].is_widget):
                    inputs.pop(name, None)
            elif target[0] == "value":
                inputs[name] = _wrap(target[1])
            else:
                inputs[name] = [target[1], target[2]]
        ordered = {n: inputs[n] for n in spec.inputs if n in inputs}
        ordered.update({n: v for n, v in inputs.items() if n not in ordered})
        prompt[node_id] = {"inputs": ordered, "class_type": kind,
                           "_meta": {"title": node.get("title") or spec.display_name}}
    return prompt
