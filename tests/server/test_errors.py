"""Every 400 case captured from ComfyUI 0.3.64 (errors/_index.json), replayed against our server."""

from __future__ import annotations

import json

import pytest
import requests

# The details of these errors name the node list or a Python traceback, which differ between implementations.
_DETAILS_DEPEND_ON_IMPLEMENTATION = {"value_not_in_list", "exception_during_inner_validation"}


def _cases(reference_dir):
    index = json.loads((reference_dir / "errors" / "_index.json").read_text())
    return {name: case for name, case in index.items() if not name.startswith("runtime")}


@pytest.fixture(scope="module")
def cases(reference_dir):
    return _cases(reference_dir)


def _compare_node_errors(ours: dict, ref: dict, name: str) -> None:
    assert set(ours) == set(ref), f"{name}: node ids with errors"
    for node_id, ref_entry in ref.items():
        entry = ours[node_id]
        assert set(entry) == {"errors", "dependent_outputs", "class_type"}
        assert entry["class_type"] == ref_entry["class_type"]
        assert sorted(entry["dependent_outputs"]) == sorted(ref_entry["dependent_outputs"])
        assert sorted(e["type"] for e in entry["errors"]) == sorted(e["type"] for e in ref_entry["errors"])
        for ref_err in ref_entry["errors"]:
            err = next(e for e in entry["errors"] if e["type"] == ref_err["type"])
            assert set(err) == {"type", "message", "details", "extra_info"}
            assert err["extra_info"].get("input_name") == ref_err["extra_info"].get("input_name"), name
            if ref_err["type"] in _DETAILS_DEPEND_ON_IMPLEMENTATION:
                assert err["message"] == ref_err["message"], name
                assert err["details"], name
            else:
                assert (err["message"], err["details"]) == (ref_err["message"], ref_err["details"]), name
                assert set(err["extra_info"]) == set(ref_err["extra_info"]), name
                for key in ("received_value", "received_type", "linked_node", "exception_message"):
                    if key in ref_err["extra_info"]:
                        assert err["extra_info"][key] == ref_err["extra_info"][key], (name, key)


def test_every_reference_error_case(server, cases):
    assert len(cases) >= 15
    for name, case in cases.items():
        body = case["request"]
        answer = requests.post(server.url + "/prompt", json=body, timeout=60)
        assert answer.status_code == case["status"], (name, answer.text)
        assert answer.headers["Content-Type"].startswith("application/json")
        ours, ref = answer.json(), case["response"]
        if case["status"] == 200:
            assert set(ours) == set(ref) and ours["node_errors"] == ref["node_errors"]
            continue
        assert set(ours) == {"error", "node_errors"}, name
        assert set(ours["error"]) == {"type", "message", "details", "extra_info"}, name
        assert ours["error"]["type"] == ref["error"]["type"], name
        assert ours["error"]["message"] == ref["error"]["message"], name
        assert ours["error"]["details"] == ref["error"]["details"], name
        assert ours["error"]["extra_info"] == ref["error"]["extra_info"], name
        _compare_node_errors(ours["node_errors"], ref["node_errors"], name)


def test_number_counts_every_post_without_number(server, cases):
    """As ComfyUI: ``number`` grows on every POST without one, valid or not; ``front`` negates it."""
    bad = cases["no_output_node"]["request"]
    first = requests.post(server.url + "/prompt", json=bad, timeout=30)
    assert first.status_code == 400
    valid = {"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "dot.png"}},
                        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}}
    a = requests.post(server.url + "/prompt", json=valid, timeout=30).json()["number"]
    b = requests.post(server.url + "/prompt", json=valid, timeout=30).json()["number"]
    c = requests.post(server.url + "/prompt", json={**valid, "front": True}, timeout=30).json()["number"]
    d = requests.post(server.url + "/prompt", json={**valid, "number": 2.5}, timeout=30).json()["number"]
    assert (b, c, d) == (a + 1, -(a + 2), 2.5)


def test_non_json_and_non_object_prompts_get_400(server):
    answer = requests.post(server.url + "/prompt", data=b"{not json", timeout=30)
    assert answer.status_code == 400 and "JSON" in answer.json()["error"]
    answer = requests.post(server.url + "/prompt", json={"prompt": [1, 2]}, timeout=30)
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_prompt"
