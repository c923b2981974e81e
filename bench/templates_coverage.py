"""How many of ComfyUI's own local (open-source) template workflows the embedded engine can run.

    python bench/templates_coverage.py            # a summary table
    python bench/templates_coverage.py --missing  # plus the nodes each failing template lacks
    python bench/templates_coverage.py --package comfyui_workflow_templates   # the 0.1.95 release instead

A template counts as runnable when every node it uses (inside its subgraphs too) is one the engine implements
(comfykit.nodes.NODE_CLASS_MAPPINGS) and it converts from the UI format. Whether it then runs on tiny models is what
tests/engine/test_comfyui_templates.py checks for the templates it lists. Needs `comfyui-workflow-templates-json`.
"""

from __future__ import annotations

import collections
import json
import sys
from importlib import resources

#: UI-only nodes the converter drops or resolves (notes, reroutes, primitives)
VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode", "PrimitiveString", "PrimitiveInt", "PrimitiveFloat",
           "PrimitiveBoolean", "PrimitiveStringMultiline"}


def local_templates(root) -> list[str]:
    """Names of the open-source (non-API) templates in the package's index."""
    index = json.loads((root / "index.json").read_text())
    return [t["name"] for group in index for t in group["templates"]
            if t.get("openSource", True) and "API" not in t.get("tags", []) and not t["name"].startswith("api_")
            and group.get("category") != "API"]


def node_types(graph: dict) -> set[str]:
    """Every node type of a UI-format graph, inside subgraph definitions too (subgraph instances excluded)."""
    subgraphs = graph.get("definitions", {}).get("subgraphs", [])
    ids = {sg["id"] for sg in subgraphs}
    types = {n["type"] for n in graph.get("nodes", [])}
    for sg in subgraphs:
        types |= {n["type"] for n in sg.get("nodes", [])}
    return types - ids - VIRTUAL


def main(argv: list[str]) -> int:
    import comfykit as ck
    from comfykit.graph import validate_prompt
    from comfykit.nodes import NODE_CLASS_MAPPINGS

    package = argv[argv.index("--package") + 1] if "--package" in argv else "comfyui_workflow_templates_json"
    root = resources.files(package) / "templates"
    names = local_templates(root)
    runnable, missing_by_template, missing_count = [], {}, collections.Counter()
    for name in names:
        path = root / f"{name}.json"
        if not path.is_file():
            continue
        graph = json.loads(path.read_text())
        missing = sorted(node_types(graph) - set(NODE_CLASS_MAPPINGS))
        if not missing:
            try:  # converted and validated against the engine's schema: a CLIPLoader type it lacks fails here
                validate_prompt(ck.Workflow.load(graph).to_api(validate=False))
            except Exception as exc:  # noqa: BLE001 - a conversion failure is a result to report
                reason = str(exc).splitlines()[-1].strip()[:90]
                missing = [f"({type(exc).__name__}: {reason})"]
        if missing:
            missing_by_template[name] = missing
            missing_count.update(missing)
        else:
            runnable.append(name)
    print(f"| local templates | runnable by the embedded engine | nodes implemented |\n|---|---|---|\n"
          f"| {len(runnable) + len(missing_by_template)} | {len(runnable)} | {len(NODE_CLASS_MAPPINGS)} |")
    print("\nrunnable:", ", ".join(runnable))
    print("\nmost wanted missing nodes:", ", ".join(f"{n} ({c})" for n, c in missing_count.most_common(15)))
    if "--missing" in argv:
        for name, missing in sorted(missing_by_template.items()):
            print(f"  {name}: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
