"""Malformed requests get ComfyUI-style 400s, never 500s; non-finite numbers, duplicate ids and bloat are refused."""

from __future__ import annotations

import json
import uuid

import pytest
import requests
from conftest import post, scale, t2i, wait_history

from comfykit.server.queue import PromptQueue


def _raw(server, path: str, body: str | bytes) -> requests.Response:
    return requests.post(server.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=60)


def _strict_json(answer: requests.Response):
    """The body parsed as strict JSON (NaN and Infinity refused), as browsers' JSON.parse does."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(answer.text, parse_constant=refuse)


def test_class_type_that_is_not_a_string_is_a_400(server):
    for class_type in (["SaveImage"], {"a": 1}, 5, None):
        answer = post(server, {"1": {"class_type": class_type, "inputs": {}}})
        assert answer.status_code == 400
        assert answer.json()["error"]["type"] == "invalid_prompt"


def test_inputs_that_are_not_an_object_are_a_400(server):
    answer = post(server, {"1": {"class_type": "PreviewImage", "inputs": [1, 2]}})
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_prompt"


@pytest.mark.parametrize("path", ["/prompt", "/queue", "/history", "/free", "/interrupt"])
def test_deeply_nested_json_is_a_400(server, path):
    deep = "[" * 100_000 + "]" * 100_000
    assert _raw(server, path, deep).status_code == 400
    assert _raw(server, path, '{"prompt": ' + deep + "}").status_code == 400


@pytest.mark.parametrize("targets", [5, "9", [5], {"9": 1}])
def test_partial_execution_targets_must_be_a_list_of_ids(server, targets):
    answer = post(server, scale(8), partial_execution_targets=targets)
    assert answer.status_code == 400
    assert "partial_execution_targets" in answer.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/queue", "/history", "/free"])
@pytest.mark.parametrize("body", ["5", "[1, 2]", '"clear"', "null", "true"])
def test_non_object_bodies_are_a_400(server, path, body):
    answer = _raw(server, path, body)
    assert answer.status_code == 400 and "JSON object" in answer.json()["error"]


@pytest.mark.parametrize("path", ["/queue", "/history"])
@pytest.mark.parametrize("delete", [5, "abc", [["x"]], {"a": 1}])
def test_bad_delete_lists_are_a_400(server, path, delete):
    answer = requests.post(server.url + path, json={"delete": delete}, timeout=30)
    assert answer.status_code == 400 and "delete" in answer.json()["error"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_cfg_is_refused_and_history_stays_json(server, demo_ckpt, value):
    prompt = json.dumps(t2i(demo_ckpt)).replace('"cfg": 7.0', f'"cfg": {value}')
    answer = _raw(server, "/prompt", '{"prompt": ' + prompt + "}")
    assert answer.status_code == 400
    errors = answer.json()["node_errors"]["3"]["errors"]
    assert errors[0]["extra_info"]["input_name"] == "cfg" and errors[0]["type"] == "invalid_input_type"
    _strict_json(requests.get(server.url + "/history", timeout=30))
    _strict_json(requests.get(server.url + "/queue", timeout=30))


@pytest.mark.parametrize("where", ["extra_data", "unknown_input", "number"])
def test_non_finite_numbers_elsewhere_are_refused(server, where):
    prompt = scale(8)
    body = {"prompt": prompt}
    if where == "extra_data":
        body["extra_data"] = {"x": float("nan")}
    elif where == "unknown_input":
        prompt["3"]["inputs"]["not_in_schema"] = float("inf")
    else:
        body["number"] = float("nan")
    answer = _raw(server, "/prompt", json.dumps(body))
    assert answer.status_code == 400
    _strict_json(requests.get(server.url + "/queue", timeout=30))


@pytest.mark.parametrize("client_id", [["a"], {"a": 1}, 5, True])
def test_client_id_must_be_a_string(server, client_id):
    answer = post(server, scale(8), client_id=client_id)
    assert answer.status_code == 400 and "client_id" in answer.json()["error"]["message"]
    nested = post(server, scale(8), extra_data={"client_id": client_id})
    assert nested.status_code == 400


def test_prompt_id_must_be_a_string_or_number(server):
    assert post(server, scale(8), prompt_id=["x"]).status_code == 400
    assert post(server, scale(8), prompt_id={"x": 1}).status_code == 400


def test_a_duplicate_prompt_id_is_refused(server):
    prompt_id = f"dup-{uuid.uuid4()}"
    first = post(server, scale(8), prompt_id=prompt_id)
    assert first.status_code == 200 and first.json()["prompt_id"] == prompt_id
    again = post(server, scale(8), prompt_id=prompt_id)  # still queued or running
    assert again.status_code == 400 and "already in use" in again.json()["error"]["message"]
    wait_history(server, prompt_id, timeout=60)
    later = post(server, scale(8), prompt_id=prompt_id)  # in the history
    assert later.status_code == 400
    history = requests.get(server.url + f"/history/{prompt_id}", timeout=30).json()
    assert list(history) == [prompt_id]


def test_extra_data_is_capped(server):
    big = {"blob": "x" * (11 * 1024 * 1024)}
    answer = post(server, scale(8), extra_data=big)
    assert answer.status_code == 400 and "extra_data" in answer.json()["error"]["message"]


def _item(prompt_id: str, blob: int) -> list:
    return [0, prompt_id, {"1": {"class_type": "X", "inputs": {}}}, {"blob": "x" * blob}, ["1"]]


def test_history_is_bounded_by_bytes_as_well_as_count():
    queue = PromptQueue(max_history=100, max_bytes=50_000)
    for i in range(20):
        queue.put(_item(f"p{i}", 10_000))
        item, task = queue.get(timeout=5)
        queue.task_done(task, {"outputs": {}, "status": {"status_str": "success", "completed": True,
                                                         "messages": []}, "meta": {}})
        assert queue.history_bytes() <= 50_000
    kept = list(queue.get_history())
    assert 2 <= len(kept) <= 5 and kept[-1] == "p19"  # the newest stay, the oldest went
    assert queue.history_bytes() == sum(len(json.dumps(v, separators=(",", ":"))) for v in
                                        queue.get_history().values())
    queue.delete_history(["p19"])
    queue.wipe_history()
    assert queue.history_bytes() == 0


def test_an_entry_bigger_than_the_bound_still_stays_alone():
    queue = PromptQueue(max_history=100, max_bytes=1000)
    for name in ("a", "b"):
        queue.put(_item(name, 5000))
        _, task = queue.get(timeout=5)
        queue.task_done(task, {"outputs": {}})
    assert list(queue.get_history()) == ["b"]


def test_known_ids_cover_pending_running_and_history():
    queue = PromptQueue()
    queue.put(_item("a", 1))
    assert queue.known("a") and not queue.known("b")
    _, task = queue.get(timeout=5)
    assert queue.known("a")
    queue.task_done(task, {"outputs": {}})
    assert queue.known("a")
    queue.delete_history(["a"])
    assert not queue.known("a")
    queue.put(_item("c", 1))
    queue.delete(["c"])
    assert not queue.known("c")
