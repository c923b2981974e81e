"""What run() accepts: a Workflow, an API dict, a POST /prompt body, or a UI (editor) workflow.

Every backend turns these into an API prompt with the same function, ``comfykit.graph.prompt.to_api_prompt``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from comfykit.errors import ValidationError
from comfykit.graph.prompt import to_api_prompt


def to_prompt(workflow, schema=None):
    return to_api_prompt(workflow, schema, validate=True, ui=True)

API = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}


def test_api_dict_and_post_body():
    assert to_prompt(API) == (API, None)
    assert to_prompt({"prompt": API, "client_id": "x"}) == (API, None)


def test_workflow_object_is_compiled():
    class Fake:
        def to_api(self):
            return API

    assert to_prompt(Fake()) == (API, None)


def test_ui_workflow_is_compiled_and_kept_for_png_metadata():
    pytest.importorskip("comfykit.graph")
    ui = {"last_node_id": 2, "last_link_id": 1, "version": 0.4, "links": [[1, 1, 0, 2, 0, "IMAGE"]],
          "nodes": [{"id": 1, "type": "LoadImage", "mode": 0, "inputs": [],
                     "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
                     "widgets_values": ["cat.png", "image"]},
                    {"id": 2, "type": "PreviewImage", "mode": 0,
                     "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [],
                     "widgets_values": []}]}
    prompt, kept = to_prompt(ui)
    assert prompt["1"]["class_type"] == "LoadImage" and prompt["1"]["inputs"]["image"] == "cat.png"
    assert prompt["2"]["inputs"]["images"] == ["1", 0]
    assert kept is ui


@pytest.mark.parametrize("bad, error, match", [
    ({"1": {"inputs": {}}}, ValueError, "node '1' has no class_type"),
    ({"1": "KSampler"}, ValueError, "node '1' has no class_type"),
    ("prompt.json", TypeError, "not str"),
    ({"1": {"inputs": {}}}, ValidationError, "node '1' has no class_type"),
])
def test_bad_input_names_the_problem(bad, error, match):
    with pytest.raises(error, match=match):
        to_prompt(bad)


def test_api_dict_is_copied_only_when_asked():
    nested = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64}}}
    assert to_api_prompt(nested).prompt["1"] is nested["1"]
    copied = to_api_prompt(nested, copy=True).prompt
    copied["1"]["inputs"]["width"] = 8
    assert nested["1"]["inputs"]["width"] == 64


def test_workflow_ui_export_is_asked_for():
    class Fake:
        def to_api(self):
            return API

        def to_ui(self):
            return {"nodes": [], "links": []}

    assert to_api_prompt(Fake()).ui is None
    assert to_api_prompt(Fake(), ui=True).ui == {"nodes": [], "links": []}


def test_importing_the_client_stays_light():
    code = ("import sys, comfykit, comfykit.client; import comfykit as ck; ck.ComfyServer; "
            "heavy = {'torch', 'aiohttp', 'diffusers', 'ipywidgets', 'pyngrok', 'ray'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
