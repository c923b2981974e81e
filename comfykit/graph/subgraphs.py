"""Flatten subgraph instances of a UI-format workflow (schema version 1 ``definitions.subgraphs``).

Inside a subgraph definition, links from node -10 are the instance's inputs and links to node -20 its outputs.
Inner nodes become ``"<instance id>:<inner id>"``, the ids ComfyUI's page sends for them.
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import ValidationError

INPUT_NODE, OUTPUT_NODE = "-10", "-20"
#: Key of the {widget name: value} a flattened node gets from its instance's promoted widgets.
OVERRIDES = "comfykit_widget_overrides"


def link_table(links: list) -> dict[Any, list]:
    """link id -> [origin_id, origin_slot, target_id, target_slot, type], for both link encodings."""
    out: dict[Any, list] = {}
    for link in links or []:
        if isinstance(link, dict):  # schema version 1
            out[link["id"]] = [str(link["origin_id"]), link["origin_slot"], str(link["target_id"]),
                               link["target_slot"], link.get("type")]
        elif isinstance(link, (list, tuple)) and len(link) >= 5:  # version 0.4
            out[link[0]] = [str(link[1]), link[2], str(link[3]), link[4], link[5] if len(link) > 5 else None]
    return out


def flatten(nodes: dict[str, dict], links: dict[Any, list], definitions: dict[str, dict],
            depth: int = 0) -> None:
    """Replace every subgraph instance in ``nodes``/``links`` (changed in place) by its inner nodes."""
    if depth > 32:
        raise ValidationError("subgraphs nest more than 32 levels deep (or contain themselves)")
    instances = [i for i, n in nodes.items() if n.get("type") in definitions]
    for instance_id in instances:
        instance = nodes.pop(instance_id)
        _expand(instance_id, instance, definitions[instance["type"]], nodes, links)
    if instances:
        flatten(nodes, links, definitions, depth + 1)


def _expand(instance_id: str, instance: dict, definition: dict, nodes: dict, links: dict) -> None:
    prefix = f"{instance_id}:"
    inner_links = link_table(definition.get("links") or [])
    outer_inputs = _outer_inputs(instance, definition)
    # Outer links leaving the instance, by output slot: their origin moves inside.
    leaving: dict[int, list] = {}
    for link in links.values():
        if link[0] == instance_id:
            leaving.setdefault(link[1], []).append(link)
    renamed: dict[Any, str] = {}
    for link_id, (origin, slot, target, target_slot, type_) in inner_links.items():
        if origin == INPUT_NODE:
            outer = outer_inputs[slot] if slot < len(outer_inputs) else None
            if outer is None or outer not in links:
                continue  # an unconnected subgraph input: the inner widget keeps its own value
            origin, slot = links[outer][0], links[outer][1]
        else:
            origin = prefix + origin
        if target == OUTPUT_NODE:
            for link in leaving.get(target_slot, []):
                link[0], link[1] = origin, slot
            continue
        new_id = prefix + str(link_id)
        renamed[link_id] = new_id
        links[new_id] = [origin, slot, prefix + target, target_slot, type_]
    overrides = _promoted_values(instance, definition, inner_links, outer_inputs)
    mode = instance.get("mode", 0)
    for inner in definition.get("nodes") or []:
        node = copy.deepcopy(inner)
        node["id"] = prefix + str(inner["id"])
        if str(inner["id"]) in overrides:
            node[OVERRIDES] = {**node.get(OVERRIDES, {}), **overrides[str(inner["id"])]}
        for entry in node.get("inputs") or []:
            entry["link"] = renamed.get(entry.get("link"))
        if mode in (2, 4):  # a muted or bypassed instance mutes or bypasses everything inside
            node["mode"] = mode
        nodes[node["id"]] = node


def _outer_inputs(instance: dict, definition: dict) -> list[Any]:
    """The outer link feeding each of the definition's inputs, in the definition's order.

    An instance lists only the inputs it shows: a subgraph input promoted to a widget on the instance has no slot
    there, so slots are matched by name (by position only for entries saved without names).
    """
    entries = instance.get("inputs") or []
    inputs = definition.get("inputs") or []
    if entries and inputs and all(e.get("name") for e in entries) and all(i.get("name") for i in inputs):
        by_name = {e["name"]: e.get("link") for e in entries}
        return [by_name.get(i["name"]) for i in inputs]
    return [entry.get("link") for entry in entries]


def _promoted_values(instance: dict, definition: dict, inner_links: dict, outer_inputs: list) -> dict[str, dict]:
    """Inner node id -> {widget: value} from the instance's promoted widgets (``properties.proxyWidgets``).

    Each entry is ``[inner node id, widget name]``, or ``["-1", subgraph input name]`` for a widget-typed
    subgraph input; the instance's ``widgets_values`` hold their values in the same order.
    """
    proxies = (instance.get("properties") or {}).get("proxyWidgets") or []
    values = instance.get("widgets_values")
    if not isinstance(values, list) or len(values) != len(proxies):
        return {}  # no values saved on the instance: the inner widgets keep their own
    inner_nodes = {str(n["id"]): n for n in definition.get("nodes") or []}
    names = [entry.get("name") for entry in definition.get("inputs") or []]
    out: dict[str, dict] = {}
    for (target, widget), value in zip(proxies, values):
        target = str(target)
        if target != "-1":
            out.setdefault(target, {})[widget] = value
            continue
        if widget not in names:
            continue
        slot = names.index(widget)
        if slot < len(outer_inputs) and outer_inputs[slot] is not None:
            continue  # a linked input wins over the widget value
        for origin, origin_slot, inner_id, inner_slot, _ in inner_links.values():
            if origin == INPUT_NODE and origin_slot == slot and inner_id in inner_nodes:
                entries = inner_nodes[inner_id].get("inputs") or []
                if inner_slot < len(entries):
                    entry = entries[inner_slot]
                    name = (entry.get("widget") or {}).get("name") or entry.get("name")
                    out.setdefault(inner_id, {})[name] = value
    return out
