"""Structural differences between two workflows: nodes added or removed, inputs changed, links rewired."""

from __future__ import annotations

from typing import Any


def _show(value: Any) -> str:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
        return f"#{value[0]}[{value[1]}]"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def diff_prompts(old: dict[str, dict], new: dict[str, dict]) -> list[str]:
    """One line per difference between two API prompts, in node id order of ``new`` then removed ids."""
    lines: list[str] = []
    for node_id, node in new.items():
        before = old.get(node_id)
        if before is None:
            lines.append(f"+ #{node_id} {node['class_type']}")
            continue
        if before.get("class_type") != node.get("class_type"):
            lines.append(f"~ #{node_id} class {before.get('class_type')} -> {node.get('class_type')}")
            continue
        a, b = before.get("inputs") or {}, node.get("inputs") or {}
        for name in list(b) + [n for n in a if n not in b]:
            if name not in a:
                lines.append(f"~ #{node_id} {node['class_type']}.{name}: set to {_show(b[name])}")
            elif name not in b:
                lines.append(f"~ #{node_id} {node['class_type']}.{name}: unset (was {_show(a[name])})")
            elif a[name] != b[name]:
                lines.append(f"~ #{node_id} {node['class_type']}.{name}: {_show(a[name])} -> {_show(b[name])}")
        title_a = (before.get("_meta") or {}).get("title")
        title_b = (node.get("_meta") or {}).get("title")
        if title_a != title_b:
            lines.append(f"~ #{node_id} {node['class_type']} title: {title_a!r} -> {title_b!r}")
    lines += [f"- #{node_id} {node.get('class_type')}" for node_id, node in old.items() if node_id not in new]
    return lines
