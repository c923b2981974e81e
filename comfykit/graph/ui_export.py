"""Workflow -> the UI format the ComfyUI page loads (version 0.4), with a simple layered layout.

The page then shows the graph with positions, and ``Workflow.from_ui`` reads it back to the same prompt.
Widget values are stored in input order, with the page's hidden ``control_after_generate`` slot ("fixed").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .nodes import Output

if TYPE_CHECKING:
    from .workflow import Workflow

_COLUMN, _ROW = 420, 60


def _int_ids(wf: Workflow) -> dict[str, int]:
    """Node id -> an integer id for the page: digit ids are kept, others get numbers after the largest."""
    ids = {n.id: int(n.id) for n in wf if n.id.isdigit()}
    next_id = max(ids.values(), default=0) + 1
    for node in wf:
        if node.id not in ids:
            ids[node.id] = next_id
            next_id += 1
    return ids


def _depths(wf: Workflow) -> dict[str, int]:
    """Longest distance from a node without links into it: the layout column."""
    depth: dict[str, int] = {}
    pending = list(wf)
    for _ in range(len(pending) + 1):  # bounded: a cycle leaves its nodes in column 0
        progressed = False
        for node in list(pending):
            sources = [v.node.id for v in node._inputs.values() if isinstance(v, Output) and v.node.id in wf]
            if all(s in depth for s in sources):
                depth[node.id] = 1 + max((depth[s] for s in sources), default=-1)
                pending.remove(node)
                progressed = True
        if not pending or not progressed:
            break
    for node in pending:
        depth[node.id] = 0
    return depth


def to_ui(wf: Workflow) -> dict[str, Any]:
    """The UI-format dict (version 0.4) of ``wf``, laid out left to right by data flow."""
    ids = _int_ids(wf)
    depth = _depths(wf)
    rows: dict[int, int] = {}
    links: list[list] = []
    outputs_links: dict[tuple[str, int], list[int]] = {}
    nodes = []
    for order, node in enumerate(sorted(wf, key=lambda n: (depth[n.id], ids[n.id]))):
        spec = node.spec
        inputs, widgets = [], []
        for name, ispec in spec.inputs.items():
            value = node._inputs.get(name)
            linked = isinstance(value, Output)
            if ispec.is_widget and not ispec.options.get("forceInput"):
                shown = value if not linked and name in node._inputs else ispec.default
                if isinstance(shown, dict) and "__value__" in shown:
                    shown = shown["__value__"]
                widgets.append("" if shown is None else shown)
                if ispec.control_after_generate:
                    widgets.append("fixed")  # the page's "control after generate" choice
                if not linked:
                    continue
            entry: dict[str, Any] = {"name": name, "type": ispec.type, "link": None}
            if ispec.is_widget:
                entry["widget"] = {"name": name}
            if linked:
                link_id = len(links) + 1
                entry["link"] = link_id
                links.append([link_id, ids[value.node.id], value.index, ids[node.id], len(inputs), value.type])
                outputs_links.setdefault((value.node.id, value.index), []).append(link_id)
            inputs.append(entry)
        column = depth[node.id]
        row_y = rows.get(column, 60)
        height = 60 + 26 * (len(widgets) + max(len(inputs), len(spec.outputs)))
        rows[column] = row_y + height + _ROW
        data: dict[str, Any] = {
            "id": ids[node.id], "type": spec.name, "pos": [60 + column * _COLUMN, row_y], "size": [340, height],
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": [],
            "properties": {"Node name for S&R": spec.name}, "widgets_values": widgets}
        if node.title is not None:
            data["title"] = node.title
        nodes.append((node, data))
    for node, data in nodes:
        data["outputs"] = [{"name": name, "type": type_, "links": outputs_links.get((node.id, i)) or None,
                            "slot_index": i}
                           for i, (name, type_) in enumerate(zip(node.spec.output_names, node.spec.outputs))]
    return {"last_node_id": max(ids.values(), default=0), "last_link_id": len(links),
            "nodes": [data for _, data in nodes], "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}
