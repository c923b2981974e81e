"""validate_prompt's rules beyond the captured bodies: link types, extra inputs, deep chains, cycles."""

from __future__ import annotations

import pytest

from comfykit.errors import ValidationError
from comfykit.graph import Schema, find_cycle, types_match, validate_prompt


def _schema() -> Schema:
    info = {
        "Src": {"input": {"required": {}}, "output": ["A,B", "*", "COMBO"], "output_name": ["ab", "any", "combo"]},
        "Sink": {"input": {"required": {"x": ["B"]}, "optional": {"mode": ["COMBO", {"options": ["p", "q"]}],
                                                                  "pick": [["u", "v"]]},
                           "hidden": {"prompt": "PROMPT"}},
                 "output": [], "output_node": True},
        "Pass": {"input": {"required": {"x": ["LATENT"]}}, "output": ["LATENT"]},
        "Start": {"input": {"required": {}}, "output": ["LATENT"]},
        "Out": {"input": {"required": {"x": ["LATENT"]}}, "output": [], "output_node": True},
    }
    return Schema(info)


def test_type_rules():
    assert types_match("A,B", "B") and types_match("*", "MODEL") and types_match("MODEL", "*")
    assert types_match("A, B", "C,B") and not types_match("A", "B")


def test_unions_any_extra_and_hidden_inputs():
    schema = _schema()
    prompt = {"1": {"class_type": "Src", "inputs": {}},
              "2": {"class_type": "Sink", "inputs": {"x": ["1", 0], "mode": "zzz", "unknown": 5, "prompt": 1}},
              "3": {"class_type": "Sink", "inputs": {"x": ["1", 1], "pick": ["1", 2]}}}
    result = validate_prompt(prompt, schema)
    assert result.outputs == ["2", "3"] and result.node_errors == {}
    # V3 combos are not membership-checked by ComfyUI 0.3.64; V1 list combos are.
    prompt["2"]["inputs"]["pick"] = "w"
    with pytest.raises(ValidationError) as caught:
        validate_prompt(prompt, schema, partial_targets=["2"])
    assert caught.value.node_errors["2"]["errors"][0]["details"] == "pick: 'w' not in ['u', 'v']"


def test_bad_link_shapes():
    schema = _schema()
    prompt = {"1": {"class_type": "Src", "inputs": {}},
              "2": {"class_type": "Sink", "inputs": {"x": ["1", 0, 1]}}}
    with pytest.raises(ValidationError) as caught:
        validate_prompt(prompt, schema)
    assert caught.value.node_errors["2"]["errors"][0]["type"] == "bad_linked_input"
    prompt["2"]["inputs"]["x"] = ["9", 0]  # the output node's own link: ComfyUI's outer handler reports it
    with pytest.raises(ValidationError) as caught:
        validate_prompt(prompt, schema)
    err = caught.value.node_errors["2"]["errors"][0]
    assert err["type"] == "exception_during_validation" and err["details"] == "'9'"
    assert err["extra_info"]["exception_type"] == "KeyError"


def test_deep_chains_validate_without_recursion_and_cycles_do_not_hang():
    n = 5000
    prompt = {"0": {"class_type": "Start", "inputs": {}}}
    for i in range(1, n):
        prompt[str(i)] = {"class_type": "Pass", "inputs": {"x": [str(i - 1), 0]}}
    prompt["out"] = {"class_type": "Out", "inputs": {"x": [str(n - 1), 0]}}
    assert validate_prompt(prompt, _schema()).outputs == ["out"]
    assert find_cycle(prompt) is None
    prompt["0"] = {"class_type": "Pass", "inputs": {"x": ["3", 0]}}
    assert validate_prompt(prompt, _schema()).outputs == ["out"]  # ComfyUI reports cycles when executing
    cycle = find_cycle(prompt)
    assert cycle[0] == cycle[-1] and set(cycle) == {"0", "1", "2", "3"}


def test_unknown_schema_source_types():
    with pytest.raises(TypeError):
        validate_prompt({}, schema=3.5)


def test_load_image_checks_the_file_like_comfyuis_validate_inputs():
    schema = Schema.builtin(files={"input": ["a.png"]})
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    with pytest.raises(ValidationError) as caught:
        validate_prompt(prompt, schema)
    assert caught.value.node_errors["1"]["errors"] == [{
        "type": "custom_validation_failed", "message": "Custom validation failed for node",
        "details": "image - Invalid image file: b.png", "extra_info": {"input_name": "image"}}]
    for ok in ("a.png", "ComfyUI_00001_.png [output]"):
        prompt["1"]["inputs"]["image"] = ok
        assert validate_prompt(prompt, schema).outputs == ["2"]
    assert validate_prompt(prompt, Schema.builtin()).outputs == ["2"]  # no file list: the backend checks


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "inf"])
def test_non_finite_floats_are_refused(value):
    info = {"F": {"input": {"required": {"v": ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0}]}},
                  "output": [], "output_node": True},
            "G": {"input": {"required": {"v": ["FLOAT", {"default": 1.0}]}}, "output": [], "output_node": True}}
    for class_type in ("F", "G"):  # with and without a range: NaN passes every comparison
        with pytest.raises(ValidationError) as caught:
            validate_prompt({"1": {"class_type": class_type, "inputs": {"v": value}}}, Schema(info))
        error = caught.value.node_errors["1"]["errors"][0]
        assert error["type"] == "invalid_input_type" and error["extra_info"]["input_name"] == "v"
        assert "finite" in str(caught.value)


@pytest.mark.parametrize("class_type", [["Out"], {"a": 1}, 5, None])
def test_class_type_that_is_not_a_string_is_a_validation_error(class_type):
    with pytest.raises(ValidationError) as caught:
        validate_prompt({"1": {"class_type": class_type, "inputs": {}}}, _schema())
    assert caught.value.error["type"] == "invalid_prompt" and "#1" in caught.value.error["details"]


def test_inputs_that_are_not_an_object_are_a_validation_error():
    with pytest.raises(ValidationError, match="inputs"):
        validate_prompt({"1": {"class_type": "Start", "inputs": ["x"]}, "2": {"class_type": "Out",
                                                                           "inputs": {"x": ["1", 0]}}}, _schema())


def test_many_failing_outputs_keep_comfyui_dependent_outputs_but_bounded():
    from comfykit.graph.validate import MAX_DEPENDENT_OUTPUTS

    prompt = {"1": {"class_type": "Pass", "inputs": {}}}  # missing its required input: fails
    for i in range(2, 300):
        prompt[str(i)] = {"class_type": "Out", "inputs": {"x": ["1", 0]}}
    prompt["good"] = {"class_type": "Out", "inputs": {"x": ["s", 0]}}
    prompt["s"] = {"class_type": "Start", "inputs": {}}
    result = validate_prompt(prompt, _schema())
    assert result.outputs == ["good"]
    deps = result.node_errors["1"]["dependent_outputs"]
    assert deps == [str(i) for i in range(2, 2 + MAX_DEPENDENT_OUTPUTS)]


def test_partial_targets_pick_outputs_in_prompt_order():
    prompt = {"s": {"class_type": "Start", "inputs": {}}}
    for i in range(5):
        prompt[f"o{i}"] = {"class_type": "Out", "inputs": {"x": ["s", 0]}}
    assert validate_prompt(prompt, _schema(), partial_targets=["o3", "o1"]).outputs == ["o1", "o3"]


def test_an_empty_choice_list_is_said_so_not_left_blank():
    info = {"L": {"input": {"required": {"ckpt_name": [[]]}}, "output": [], "output_node": True}}
    with pytest.raises(ValidationError) as caught:
        validate_prompt({"1": {"class_type": "L", "inputs": {"ckpt_name": "x.safetensors"}}}, Schema(info))
    message = str(caught.value)
    assert "is not one of" not in message and "nothing to choose from" in message
