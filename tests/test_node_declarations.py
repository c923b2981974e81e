"""Each node is declared once: the implementation takes exactly the declared inputs, and the schema comes from it."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from comfykit.graph import builtin
from comfykit.nodes import NODE_CLASSES, declared_inputs


@pytest.mark.parametrize("cls", NODE_CLASSES, ids=lambda c: c.__name__)
def test_implementation_takes_exactly_the_declared_inputs(cls):
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    kinds = [p.kind for name, p in params.items() if name != "self"]
    assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds, \
        f"{cls.__name__}.{cls.FUNCTION} must not take **kwargs: undeclared inputs would slip through"
    takes = {name: p for name, p in params.items() if name != "self"}
    declared = declared_inputs(cls)
    assert set(takes) == set(declared), (cls.__name__, sorted(set(takes) ^ set(declared)))
    for name, section in declared.items():
        has_default = takes[name].default is not inspect.Parameter.empty
        # a required input always arrives (validation fills its default); optional and hidden ones may not
        assert has_default == (section != "required"), (cls.__name__, name, section)


def test_schema_and_registry_come_from_the_same_classes():
    info = builtin.object_info()
    assert list(info) == [cls.__name__ for cls in NODE_CLASSES]
    for cls in NODE_CLASSES:
        entry = info[cls.__name__]
        assert tuple(entry["output"]) == cls.RETURN_TYPES == cls.OUTPUTS
        inputs = {**entry["input"]["required"], **entry["input"].get("optional", {}),
                  **entry["input"].get("hidden", {})}
        assert set(inputs) == set(declared_inputs(cls))
        assert entry["description"], f"{cls.__name__} needs a docstring: it is the node's description"


def test_declarations_import_without_torch():
    code = ("import sys, comfykit.nodes, comfykit.graph.builtin as b; b.object_info(); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_executor_passes_only_declared_inputs(tmp_path):
    """An API prompt carrying an input the node does not declare runs (ComfyUI ignores it) without reaching it."""
    from comfykit.engine.executor import Executor
    from comfykit.nodes import Node
    from comfykit.nodes.base import INT

    seen = {}

    class Echo(Node):
        """Echoes its number."""

        INPUTS = {"n": INT(1, 0, 10)}
        OUTPUTS = ("INT",)
        OUTPUT_NODE = True

        def run(self, n: int) -> dict:
            seen["n"] = n
            return {"ui": {"n": [n]}, "result": (n,)}

    ex = Executor({"Echo": Echo})
    result = ex.execute({"1": {"class_type": "Echo", "inputs": {"n": 3, "stray": "x"}}}, "p")
    assert result.status == "success" and seen == {"n": 3}


def test_docs_list_every_node():
    from pathlib import Path

    from comfykit.nodes import markdown

    docs = Path(__file__).resolve().parents[1] / "docs" / "nodes.md"
    assert docs.read_text() == markdown(), "docs/nodes.md is stale: regenerate it with the command at its top"
