"""validate_prompt against ComfyUI 0.3.64's real 400 bodies, one test per captured error."""

from __future__ import annotations

import json

import pytest

from comfykit.errors import ValidationError
from comfykit.graph import Schema, validate_prompt

CASES = ["bad_ckpt_name", "bad_combo_sampler", "cfg_too_large", "error_in_unconnected_node_branch",
         "link_bad_output_index", "link_to_nonexistent_node", "link_type_mismatch", "missing_class_type_key",
         "missing_required_input", "no_output_node", "seed_not_a_number", "steps_zero", "two_errors_in_two_nodes",
         "unknown_class_type"]


def _canon_error(err: dict) -> str:
    """An error dict as comparable text; tracebacks are ComfyUI's own source lines, so only their presence counts."""
    err = json.loads(json.dumps(err))
    info = err.get("extra_info") or {}
    if "traceback" in info:
        info["traceback"] = bool(info["traceback"])
    return json.dumps(err, sort_keys=True)


def _canon_node_errors(node_errors: dict) -> dict:
    return {node_id: {"errors": sorted(_canon_error(e) for e in entry["errors"]),
                      "dependent_outputs": sorted(entry["dependent_outputs"]),
                      "class_type": entry["class_type"]} for node_id, entry in node_errors.items()}


@pytest.fixture(scope="module")
def index(reference_dir):
    return json.loads((reference_dir / "errors" / "_index.json").read_text())


@pytest.fixture(scope="module")
def schema(reference_object_info):
    return Schema(reference_object_info)


def test_every_captured_error_has_a_case(reference_dir):
    captured = {p.stem for p in (reference_dir / "errors").glob("*.json")} - {"_index"}
    assert captured - set(CASES) == {"runtime_error_broken_ckpt", "no_prompt_key"}


@pytest.mark.parametrize("case", CASES)
def test_matches_comfyui_400_body(case, index, schema, reference_dir):
    expected = json.loads((reference_dir / "errors" / f"{case}.json").read_text())
    prompt = index[case]["request"]["prompt"]
    if "error" not in expected:  # ComfyUI accepted it (HTTP 200)
        result = validate_prompt(prompt, schema)
        assert result.node_errors == expected["node_errors"]
        assert result.outputs == ["9"]
        return
    with pytest.raises(ValidationError) as caught:
        validate_prompt(prompt, schema)
    assert _canon_error(caught.value.error) == _canon_error(expected["error"])
    assert _canon_node_errors(caught.value.node_errors) == _canon_node_errors(expected["node_errors"])
    assert caught.value.to_dict().keys() == expected.keys()


def test_no_prompt_key_is_the_servers_case(index, reference_dir):
    # The HTTP server answers this one before validation; the captured request indeed has no prompt.
    assert "prompt" not in index["no_prompt_key"]["request"]


def test_messages_are_readable(index, schema):
    with pytest.raises(ValidationError) as caught:
        validate_prompt(index["bad_combo_sampler"]["request"]["prompt"], schema)
    text = str(caught.value)
    assert "node 3 (KSampler) input 'sampler_name'" in text and "'nope'" in text
    with pytest.raises(ValidationError) as caught:
        validate_prompt(index["unknown_class_type"]["request"]["prompt"], schema)
    assert "NopeLoader" in str(caught.value)


def test_valid_prompt_is_coerced_like_comfyui(index, schema):
    prompt = json.loads(json.dumps(index["steps_zero"]["request"]["prompt"]))
    prompt["3"]["inputs"].update(steps="4", cfg=7, seed=42.9)
    result = validate_prompt(prompt, schema)
    inputs = result.prompt["3"]["inputs"]
    assert (inputs["steps"], inputs["cfg"], inputs["seed"]) == (4, 7.0, 42)
    assert isinstance(inputs["cfg"], float)
    assert prompt["3"]["inputs"]["steps"] == "4"  # the caller's prompt is left alone
    assert result.outputs == ["9"] and result.node_errors == {}


def test_partial_targets_and_partial_failure(index, schema):
    prompt = json.loads(json.dumps(index["steps_zero"]["request"]["prompt"]))
    prompt["3"]["inputs"]["steps"] = 4
    prompt["20"] = {"class_type": "PreviewImage", "inputs": {"images": ["21", 0]}}
    prompt["21"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0]}}  # vae missing
    result = validate_prompt(prompt, schema)
    assert result.outputs == ["9"]
    assert result.node_errors["21"]["errors"][0]["type"] == "required_input_missing"
    assert result.node_errors["21"]["dependent_outputs"] == ["20"]
    only = validate_prompt(prompt, schema, partial_targets=["9"])
    assert only.outputs == ["9"] and only.node_errors == {}
    with pytest.raises(ValidationError) as caught:
        validate_prompt(prompt, schema, partial_targets=["20"])
    assert caught.value.error["type"] == "prompt_outputs_failed_validation"
    assert caught.value.error["details"] == ""  # the output's own inputs are fine; ComfyUI leaves details empty


def test_output_nodes_own_errors_fill_details(index, schema):
    prompt = json.loads(json.dumps(index["steps_zero"]["request"]["prompt"]))
    del prompt["9"]["inputs"]["filename_prefix"]
    prompt["3"]["inputs"]["steps"] = 4
    with pytest.raises(ValidationError) as caught:
        validate_prompt(prompt, schema)
    assert caught.value.error["details"] == "Required input is missing: filename_prefix"
