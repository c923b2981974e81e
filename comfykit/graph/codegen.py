"""Workflow -> readable DSL source (``wf.to_python()``), with variable names a person would pick."""

from __future__ import annotations

import heapq
import keyword
import re
from typing import TYPE_CHECKING

from .nodes import Node, Output

if TYPE_CHECKING:
    from .workflow import Workflow

# Short names for the common nodes; others get their class name in snake_case.
_NAMES = {"CheckpointLoaderSimple": "ckpt", "EmptyLatentImage": "latent", "KSampler": "sampler",
          "KSamplerAdvanced": "sampler", "VAEDecode": "image", "VAEEncode": "encoded", "SaveImage": "save",
          "PreviewImage": "preview", "LoadImage": "loaded", "LoraLoader": "lora", "LoraLoaderModelOnly": "lora",
          "VAELoader": "vae", "LatentUpscaleBy": "upscaled", "LatentUpscale": "upscaled",
          "ImageScale": "scaled", "CLIPSetLastLayer": "clip", "ConditioningCombine": "combined"}


def snake(name: str) -> str:
    """``CLIPTextEncode`` -> ``clip_text_encode``; always a valid identifier."""
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text).lower()
    text = re.sub(r"\W+", "_", text).strip("_") or "node"
    if text[0].isdigit() or keyword.iskeyword(text):
        text = "n_" + text
    return text


def _order(wf: Workflow) -> list[Node]:
    """Nodes with every link source before its users, lowest id first where the links allow (Kahn's order)."""
    nodes = wf.nodes
    rank = {n.id: (not n.id.isdigit(), int(n.id) if n.id.isdigit() else 0, i) for i, n in enumerate(nodes)}
    waiting: dict[str, int] = {}
    users: dict[str, list[Node]] = {}
    for node in nodes:
        sources = {v.node.id for v in node._inputs.values() if isinstance(v, Output) and v.node.id in rank}
        waiting[node.id] = len(sources)
        for source in sources:
            users.setdefault(source, []).append(node)
    ready = [(rank[n.id], n.id) for n in nodes if waiting[n.id] == 0]
    heapq.heapify(ready)
    ordered: list[Node] = []
    while ready:
        _, node_id = heapq.heappop(ready)
        ordered.append(wf[node_id])
        for user in users.get(node_id, []):
            waiting[user.id] -= 1
            if waiting[user.id] == 0:
                heapq.heappush(ready, (rank[user.id], user.id))
    done = {n.id for n in ordered}
    return ordered + [n for n in nodes if n.id not in done]  # a cycle: keep the rest in workflow order


def _base_name(node: Node) -> str:
    if node.class_type == "CLIPTextEncode":
        for other in node.workflow.nodes:
            for name, value in other._inputs.items():
                if isinstance(value, Output) and value.node is node and name in ("positive", "negative"):
                    return name
        return "text"
    return _NAMES.get(node.class_type) or snake(node.class_type)


def to_python(wf: Workflow, name: str = "wf", header: bool = True) -> str:
    """The source of a DSL program that rebuilds ``wf``: exec it and ``wf.to_api()`` is the same prompt.

    With a schema other than the built-in one, the program expects a variable ``schema`` holding it.
    """
    ordered = _order(wf)
    names: dict[str, str] = {}
    used: dict[str, int] = {name: 1, "ck": 1}
    for node in ordered:
        base = _base_name(node)
        count = used.get(base, 0) + 1
        used[base] = count
        names[node.id] = base if count == 1 else f"{base}_{count}"
    lines = []
    if header:
        args = [] if wf.schema.source == "builtin" else ["schema"]
        if wf.meta_titles:
            args.append("meta_titles=True")
        lines += ["import comfykit as ck", ""]
        if args and args[0] == "schema":
            lines.append("# schema: the /object_info (dict, file, URL or backend) this workflow was made with")
        lines.append(f"{name} = ck.Workflow({', '.join(args)})")
    auto_next, seen = 1, set()
    for node in ordered:
        args = []
        declared = [k for k in node.spec.inputs if k in node._inputs]
        for key in declared + [k for k in node._inputs if k not in node.spec.inputs]:
            value = node._inputs[key]
            if isinstance(value, Output):
                src = names[value.node.id]
                out = value.node.spec.output_names[value.index]
                if len(value.node.spec.outputs) == 1:
                    text = src
                elif out.isidentifier() and value.node.spec.output_names.count(out) == 1 \
                        and out not in value.node.spec.inputs:
                    text = f"{src}.{out}"
                else:
                    text = f"{src}[{value.index}]"
            else:
                text = repr(value)
            args.append((key, text))
        # Keep the original ids only where creation order would not give them anyway (as Workflow.add counts).
        while str(auto_next) in seen:
            auto_next += 1
        if node.id != str(auto_next):
            args.append(("_id", repr(node.id)))
        seen.add(node.id)
        if node.id.isdigit():
            auto_next = max(auto_next, int(node.id) + 1)
        if node.title is not None:
            args.append(("_title", repr(node.title)))
        if all(key.isidentifier() and not keyword.iskeyword(key) for key, _ in args) \
                and node.class_type.isidentifier():
            call = f"{name}.{node.class_type}(" + ", ".join(f"{k}={v}" for k, v in args) + ")"
        else:
            kwargs = ", ".join(f"{k!r}: {v}" for k, v in args)
            call = f"{name}.add({node.class_type!r}, **{{{kwargs}}})"
        lines.append(f"{names[node.id]} = {call}")
    return "\n".join(lines) + "\n"

