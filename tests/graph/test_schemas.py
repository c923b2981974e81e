"""The built-in schema against ComfyUI's real /object_info, and every one of its 495 nodes through the DSL."""

from __future__ import annotations

import subprocess
import sys

import pytest

import comfykit as ck
from comfykit.graph import Schema, builtin
from comfykit.graph.schema import parse_input

_KEYS = ("default", "min", "max", "step", "round", "multiline", "control_after_generate", "image_upload")


def test_builtin_nodes_match_comfyui(reference_object_info):
    ours = builtin.object_info()
    assert set(ours) == set(builtin.BUILTIN_NODES)
    for name, node in ours.items():
        ref = reference_object_info[name]
        for key in ("input_order", "output", "output_is_list", "output_name", "display_name", "category",
                    "output_node", "name"):
            assert node[key] == ref[key], (name, key)
        assert set(node["input"].get("hidden", {})) == set(ref["input"].get("hidden", {}))
        for section in ("required", "optional"):
            mine, theirs = node["input"].get(section, {}), ref["input"].get(section, {})
            assert list(mine) == list(theirs), (name, section)
            for inp in mine:
                a, b = parse_input(inp, mine[inp], True), parse_input(inp, theirs[inp], True)
                assert a.type == b.type, (name, inp)
                for key in _KEYS:
                    assert a.options.get(key) == b.options.get(key), (name, inp, key)
                if a.choices is not None and not a.options.get("folder"):
                    assert [c for c in b.choices if c in a.choices] == a.choices, (name, inp)


def test_builtin_sampler_and_scheduler_names():
    assert builtin.SCHEDULER_NAMES[0] == "simple" and len(builtin.SCHEDULER_NAMES) == 9
    assert builtin.SAMPLER_NAMES[:3] == ["euler", "euler_ancestral", "heun"]
    info = builtin.object_info(files={"checkpoints": ["b.ckpt", "a.safetensors"], "input": ["x.png"]})
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["a.safetensors", "b.ckpt"]
    assert info["LoadImage"]["input"]["required"]["image"][0] == ["x.png"]
    assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == []


def _value_for(ispec):
    if ispec.has_default:
        return ispec.default
    return {"INT": 0, "FLOAT": 0.0, "STRING": "x", "BOOLEAN": False}.get(ispec.type, "x")


def test_every_reference_node_is_buildable(reference_object_info):
    """Each node gets its required widgets (defaulted where the schema has a default) and links of the right type."""
    wf = ck.Workflow(reference_object_info)
    schema = wf.schema
    producers = {}
    for name in schema.names():
        for index, type_ in enumerate(schema[name].outputs):
            producers.setdefault(type_, (name, index))
    built = 0
    for name in schema.names():
        spec = schema[name]
        inputs = {}
        for inp, ispec in spec.inputs.items():
            if not ispec.required:
                continue
            if ispec.is_widget and not ispec.options.get("forceInput"):
                if not ispec.has_default:
                    if ispec.choices == []:
                        continue  # an empty file list: nothing valid to pick, ComfyUI could not run it either
                    inputs[inp] = _value_for(ispec)
                continue
            source = producers.get(ispec.type) or next(
                (p for t, p in producers.items() if ck.graph.types_match(t, ispec.type)), None)
            if source is not None:
                inputs[inp] = wf.add(source[0])[source[1]]
        node = wf.add(name, **inputs)
        assert node.class_type == name
        built += 1
    assert built == 495
    assert ck.Workflow.from_api(wf.to_api(validate=False), reference_object_info).to_api(validate=False) == \
        wf.to_api(validate=False)


def test_v3_combo_options_are_choices(reference_object_info):
    schema = Schema(reference_object_info)
    v3 = [(n, i) for n in schema.names() for i in schema[n].inputs.values()
          if i.type == "COMBO" and not i.list_combo and i.choices]
    assert v3, "the reference has V3 combos"
    name, ispec = v3[0]
    assert ispec.choices == ispec.options["options"]
    wf = ck.Workflow(schema)
    with pytest.raises(ck.ValidationError, match="not one of"):
        wf.add(name, **{ispec.name: "definitely-not-an-option"})


def test_import_comfykit_stays_light():
    code = ("import sys, comfykit as ck; wf = ck.Workflow(); wf.EmptyLatentImage(); import comfykit.templates; "
            "bad = [m for m in ('torch', 'diffusers', 'aiohttp', 'ipywidgets', 'pyngrok', 'ray', 'requests') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
