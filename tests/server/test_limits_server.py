"""The server refuses prompts beyond its resource limits with a 400 naming node, input and limit."""

from __future__ import annotations

import pytest
import requests
from conftest import post, t2i


@pytest.mark.parametrize("node,name,value,flag", [("5", "width", 16384, "--max-pixels"),
                                                  ("5", "batch_size", 4096, "--max-batch"),
                                                  ("6", "text", "a cat, " * 150_000, "--max-text-tokens")])
def test_limits_are_400s_naming_node_input_and_limit(server, demo_ckpt, node, name, value, flag):
    prompt = t2i(demo_ckpt)
    prompt[node]["inputs"][name] = value
    if name == "width":
        prompt[node]["inputs"]["height"] = value
    answer = post(server, prompt)
    assert answer.status_code == 400
    body = answer.json()
    error = body["node_errors"][node]["errors"][0]
    assert error["extra_info"]["input_name"] == name and error["extra_info"]["limit_flag"] == flag
    assert flag in body["error"]["details"]
    assert requests.get(server.url + "/queue", timeout=30).json()["queue_pending"] == []


def test_too_many_nodes(server):
    prompt = {str(i): {"class_type": "PreviewImage", "inputs": {}} for i in range(10_001)}
    answer = post(server, prompt)
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "prompt_too_large"


def test_no_limits_when_switched_off(engine):
    from comfykit.graph.limits import Limits
    from comfykit.server.app import STATE, create_app

    assert create_app(engine)[STATE].limits == Limits.server_defaults()
    assert create_app(engine, limits=None)[STATE].limits is None
