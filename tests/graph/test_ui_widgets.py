"""UI-format conversion: missing widget values take schema defaults; values saved for another node version
are refused naming the node instead of failing later as 'not a valid INT'."""

from __future__ import annotations

import pytest

from comfykit.errors import ValidationError
from comfykit.graph import Schema, Workflow
from comfykit.graph.ui import ui_to_api


def _ui(*nodes: dict, links: list | None = None) -> dict:
    return {"last_node_id": 9, "last_link_id": 9, "nodes": list(nodes), "links": links or [], "version": 0.4}


def _node(node_id: int, kind: str, widgets=None, inputs=None, outputs=None) -> dict:
    node = {"id": node_id, "type": kind, "mode": 0, "inputs": inputs or [], "outputs": outputs or []}
    if widgets is not None:
        node["widgets_values"] = widgets
    return node


LATENT = _node(5, "EmptyLatentImage", [64, 64, 1], outputs=[{"name": "LATENT", "type": "LATENT", "links": [1]}])


def _sampler(widgets) -> dict:
    return _node(3, "KSampler", widgets, inputs=[{"name": "latent_image", "type": "LATENT", "link": 1}],
                 outputs=[{"name": "LATENT", "type": "LATENT", "links": []}])


def test_a_node_saved_without_widget_values_gets_the_schema_defaults():
    image = _node(1, "LoadImage", ["dot.png", "image"], outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [2]}])
    save = _node(2, "SaveImage", inputs=[{"name": "images", "type": "IMAGE", "link": 2}])  # no widgets_values
    prompt = Workflow.from_ui(_ui(image, save, links=[[2, 1, 0, 2, 0, "IMAGE"]])).to_api()
    assert prompt["2"]["inputs"]["filename_prefix"] == "ComfyUI"


def test_missing_trailing_values_take_defaults():
    prompt = ui_to_api(_ui(LATENT, _sampler([7, "fixed", 20, 8.0, "euler", "normal"]),
                           links=[[1, 5, 0, 3, 3, "LATENT"]]), Schema.builtin())
    assert prompt["3"]["inputs"]["denoise"] == 1.0 and prompt["3"]["inputs"]["steps"] == 20


def test_values_of_another_node_version_name_the_node():
    shifted = _sampler([7, "fixed", "Motion Transfer", 20, 8.0, "euler", "normal", 1.0])
    with pytest.raises(ValidationError) as caught:
        ui_to_api(_ui(LATENT, shifted, links=[[1, 5, 0, 3, 3, "LATENT"]]), Schema.builtin())
    message = str(caught.value)
    assert "UI node 3 (KSampler)" in message and "8 widget values" in message and "'Motion Transfer'" in message
    assert "another version" in message


def test_an_extra_value_that_still_fits_passes():
    extra = _sampler([7, "fixed", 20, 8.0, "euler", "normal", 1.0, "left over"])
    prompt = ui_to_api(_ui(LATENT, extra, links=[[1, 5, 0, 3, 3, "LATENT"]]), Schema.builtin())
    assert prompt["3"]["inputs"]["cfg"] == 8.0


def test_unknown_comfyui_node_says_the_engine_lacks_it():
    with pytest.raises(ValidationError, match="does not implement CLIPVisionLoader yet"):
        Workflow.from_ui(_ui(_node(1, "CLIPVisionLoader", ["x.safetensors"])))


def test_load_image_upload_button_value_and_a_file_another_server_has(reference_object_info):
    """The page saves LoadImage as [file, "image"] (its upload button); the file list is only that server's."""
    image = _node(1, "LoadImage", ["someone_elses_photo.png", "image"],
                  outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [2]}])
    save = _node(2, "SaveImage", ["out"], inputs=[{"name": "images", "type": "IMAGE", "link": 2}])
    prompt = ui_to_api(_ui(image, save, links=[[2, 1, 0, 2, 0, "IMAGE"]]), Schema(reference_object_info))
    assert prompt["1"]["inputs"] == {"image": "someone_elses_photo.png"}


def test_subgraph_inputs_match_by_name_when_the_instance_promotes_some_to_widgets(reference_object_info):
    """An instance lists only the inputs it shows: steps/cfg must not shift onto seed/steps (video_wan2_2_14B_s2v)."""
    inner = {"id": 7, "type": "KSampler", "mode": 0, "widgets_values": [3, "fixed", 20, 8.0, "euler", "normal", 1.0],
             "inputs": [{"name": "seed", "type": "INT", "link": 11, "widget": {"name": "seed"}},
                        {"name": "steps", "type": "INT", "link": 12, "widget": {"name": "steps"}},
                        {"name": "cfg", "type": "FLOAT", "link": 13, "widget": {"name": "cfg"}}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}]}
    definition = {"id": "sg-1", "name": "sampler", "nodes": [inner],
                  "inputs": [{"name": "seed", "type": "INT"}, {"name": "steps", "type": "INT"},
                             {"name": "cfg", "type": "FLOAT"}],
                  "outputs": [], "links": [{"id": 11, "origin_id": -10, "origin_slot": 0, "target_id": 7,
                                            "target_slot": 0, "type": "INT"},
                                           {"id": 12, "origin_id": -10, "origin_slot": 1, "target_id": 7,
                                            "target_slot": 1, "type": "INT"},
                                           {"id": 13, "origin_id": -10, "origin_slot": 2, "target_id": 7,
                                            "target_slot": 2, "type": "FLOAT"}]}
    steps = _node(1, "PrimitiveInt", [30, "fixed"], outputs=[{"name": "INT", "type": "INT", "links": [1]}])
    cfg = _node(2, "PrimitiveFloat", [4.5], outputs=[{"name": "FLOAT", "type": "FLOAT", "links": [2]}])
    instance = _node(5, "sg-1", [99], inputs=[{"name": "steps", "type": "INT", "link": 1},
                                              {"name": "cfg", "type": "FLOAT", "link": 2}])
    instance["properties"] = {"proxyWidgets": [["-1", "seed"]]}
    ui = _ui(steps, cfg, instance, links=[[1, 1, 0, 5, 0, "INT"], [2, 2, 0, 5, 1, "FLOAT"]])
    ui["definitions"] = {"subgraphs": [definition]}
    prompt = ui_to_api(ui, Schema(reference_object_info))
    sampler = prompt["5:7"]["inputs"]
    assert sampler["steps"] == ["1", 0] and sampler["cfg"] == ["2", 0] and sampler["seed"] == 99
