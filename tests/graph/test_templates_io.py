"""Templates, API/UI loading and code generation: round trips a user relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import comfykit as ck
from comfykit import templates
from comfykit.graph import validate_prompt

GOLDEN = Path(__file__).parent / "golden"


def test_template_names_and_descriptions():
    assert set(templates.names()) >= {"sd15_txt2img", "sd15_img2img", "sd15_lora", "sd15_hires_fix",
                                      "sdxl_txt2img", "sd15_txt2img_ui", "flux_schnell_txt2img", "flux_dev_txt2img",
                                      "sd35_txt2img", "sd15_inpaint", "sd15_outpaint", "esrgan_hires_fix",
                                      "sd15_controlnet"}
    assert set(templates.descriptions()) == set(templates.names())
    with pytest.raises(KeyError, match="did you mean 'sd15_txt2img'"):
        templates.path("sd15_txt2imgg")


@pytest.mark.parametrize("name", templates.names())
def test_every_template_is_valid_for_the_builtin_schema(name):
    wf = templates.load(name)
    prompt = wf.to_api()
    assert validate_prompt(prompt).outputs == [next(k for k, n in prompt.items() if n["class_type"] == "SaveImage")]
    if not name.endswith("_ui"):
        assert prompt == json.loads(templates.path(name).read_text())  # loading is lossless


def test_txt2img_uses_comfyuis_example_ids():
    prompt = json.loads(templates.path("sd15_txt2img").read_text())
    assert {k: v["class_type"] for k, v in prompt.items()} == {
        "3": "KSampler", "4": "CheckpointLoaderSimple", "5": "EmptyLatentImage", "6": "CLIPTextEncode",
        "7": "CLIPTextEncode", "8": "VAEDecode", "9": "SaveImage"}
    assert prompt["3"]["inputs"]["positive"] == ["6", 0] and prompt["3"]["inputs"]["negative"] == ["7", 0]


def test_fill_sets_the_obvious_inputs():
    prompt = templates.fill("sd15_txt2img", prompt="a red fox", negative="ugly", seed=5, steps=4, cfg=6.5,
                            width=256, height=320, ckpt_name="tiny.safetensors")
    assert prompt["6"]["inputs"]["text"] == "a red fox" and prompt["7"]["inputs"]["text"] == "ugly"
    assert (prompt["3"]["inputs"]["seed"], prompt["3"]["inputs"]["steps"], prompt["3"]["inputs"]["cfg"]) == (5, 4, 6.5)
    assert (prompt["5"]["inputs"]["width"], prompt["5"]["inputs"]["height"]) == (256, 320)
    assert prompt["4"]["inputs"]["ckpt_name"] == "tiny.safetensors"
    hires = templates.fill("sd15_hires_fix", steps=6, seed=9)
    assert hires["3"]["inputs"]["steps"] == 6 and hires["11"]["inputs"]["steps"] == 12  # only the first sampler
    assert hires["11"]["inputs"]["seed"] == 9
    ui = templates.fill("sd15_txt2img_ui", prompt="a boat")
    assert ui["6"]["inputs"]["text"] == "a boat"
    with pytest.raises(ck.ValidationError, match="steps"):
        templates.fill("sd15_txt2img", steps=0)


@pytest.mark.parametrize("name", ["default_v04", "bypass_reroute_primitive_v1", "img2img_reroutes_v04",
                                  "subgraph_v1"])
def test_ui_format_converts_like_the_comfyui_page(name):
    expected = json.loads((GOLDEN / f"{name}.api.json").read_text())
    wf = ck.Workflow.load(GOLDEN / f"{name}.json")
    assert wf.to_api() == expected
    assert ck.Workflow.from_ui(json.loads((GOLDEN / f"{name}.json").read_text())).to_api() == expected


@pytest.mark.parametrize("source", ["golden:default_v04", "golden:bypass_reroute_primitive_v1",
                                    "golden:img2img_reroutes_v04", "golden:subgraph_v1",
                                    "template:sd15_hires_fix", "template:sd15_lora", "dsl"])
def test_to_python_rebuilds_the_same_prompt(source):
    kind, _, name = source.partition(":")
    if kind == "golden":
        wf = ck.Workflow.load(GOLDEN / f"{name}.json")
    elif kind == "template":
        wf = templates.load(name)
    else:
        wf = ck.Workflow()
        ckpt = wf.CheckpointLoaderSimple(ckpt_name="m.safetensors")
        lora = wf.LoraLoader(model=ckpt.MODEL, clip=ckpt.CLIP, lora_name="l.safetensors")
        text = wf.CLIPTextEncode(text="it's \"quoted\"\nand multiline", clip=lora.CLIP)
        sampler = wf.KSampler(model=lora.MODEL, positive=text, negative=text, latent_image=wf.EmptyLatentImage())
        wf.PreviewImage(images=wf.VAEDecode(samples=sampler, vae=ckpt.VAE))
    source_code = wf.to_python()
    namespace: dict = {}
    exec(compile(source_code, "<to_python>", "exec"), namespace)
    assert namespace["wf"].to_api() == wf.to_api()


def test_to_python_reads_like_hand_written_code():
    code = templates.load("sd15_txt2img").to_python()
    assert "positive = wf.CLIPTextEncode(text=" in code and "negative = wf.CLIPTextEncode(" in code
    assert "sampler = wf.KSampler(model=ckpt.MODEL, seed=8566257" in code
    assert "positive=positive, negative=negative, latent_image=latent" in code


def test_from_api_round_trips_and_rejects_broken_links(reference_dir, reference_object_info):
    index = json.loads((reference_dir / "errors" / "_index.json").read_text())
    prompt = index["seed_not_a_number"]["request"]["prompt"]
    wf = ck.Workflow.from_api(prompt, reference_object_info)
    assert wf.to_api(validate=False) == prompt
    with pytest.raises(ck.ValidationError) as caught:
        wf.to_api()
    assert caught.value.node_errors["3"]["errors"][0]["type"] == "invalid_input_type"
    wf["3"].seed = 42
    assert wf.to_api()["3"]["inputs"]["seed"] == 42
    assert wf.EmptyLatentImage().id == "10"  # new nodes continue after the loaded ids
    with pytest.raises(ck.ValidationError, match="'99'"):
        ck.Workflow.from_api(index["link_to_nonexistent_node"]["request"]["prompt"], reference_object_info)
    with pytest.raises(ck.ValidationError, match="NopeLoader"):
        ck.Workflow.from_api(index["unknown_class_type"]["request"]["prompt"], reference_object_info)


def test_ui_unknown_nodes_are_clear_errors():
    data = json.loads((GOLDEN / "default_v04.json").read_text())
    data["nodes"][0]["type"] = "KSamplerX"
    with pytest.raises(ck.ValidationError, match="KSamplerX"):
        ck.Workflow.load(data)


def test_ui_muted_subgraph_instance_mutes_its_nodes():
    data = json.loads((GOLDEN / "subgraph_v1.json").read_text())
    before = json.dumps(data)
    next(n for n in data["nodes"] if n["id"] == 10)["mode"] = 2
    wf = ck.Workflow.load(data)
    assert "10:1" not in wf and "positive" not in wf["3"].inputs
    with pytest.raises(ck.ValidationError) as caught:
        wf.to_api()
    assert {e["details"] for e in caught.value.node_errors["3"]["errors"]} == {"positive", "negative"}
    data["nodes"][2]["mode"] = 0
    assert json.dumps(data) == before  # the caller's dict is not flattened


def test_ui_get_set_nodes_and_rgthree_reroutes_are_followed():
    data = json.loads((GOLDEN / "default_v04.json").read_text())
    # Route the checkpoint's MODEL through a KJNodes SetNode/GetNode pair and an rgthree reroute.
    data["nodes"] += [
        {"id": 20, "type": "SetNode", "mode": 0, "inputs": [{"name": "MODEL", "type": "MODEL", "link": 1}],
         "outputs": [{"name": "*", "type": "*", "links": None}], "widgets_values": ["model"]},
        {"id": 21, "type": "GetNode", "mode": 0, "inputs": [],
         "outputs": [{"name": "MODEL", "type": "MODEL", "links": [21]}], "widgets_values": ["model"]},
        {"id": 22, "type": "Reroute (rgthree)", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 21}],
         "outputs": [{"name": "", "type": "MODEL", "links": [22]}]},
    ]
    data["links"][0] = [1, 4, 0, 20, 0, "MODEL"]
    data["links"] += [[21, 21, 0, 22, 0, "MODEL"], [22, 22, 0, 3, 0, "MODEL"]]
    ksampler = next(n for n in data["nodes"] if n["id"] == 3)
    ksampler["inputs"][0]["link"] = 22
    expected = json.loads((GOLDEN / "default_v04.api.json").read_text())
    assert ck.Workflow.load(data).to_api() == expected
    data["nodes"][0]["type"] = "workflow>MyGroup"
    with pytest.raises(ck.ValidationError, match="group node"):
        ck.Workflow.load(data)


def test_save_and_load_files_and_post_bodies(tmp_path):
    wf = templates.load("sd15_lora")
    path = wf.save(tmp_path / "lora.json")
    assert ck.Workflow.load(path).to_api() == wf.to_api()
    assert ck.Workflow.load(str(path)).to_api() == wf.to_api()
    assert ck.Workflow.load({"prompt": wf.to_api(), "client_id": "x"}).to_api() == wf.to_api()
    with pytest.raises(FileNotFoundError, match="nope.json"):
        ck.Workflow.load(tmp_path / "nope.json")


def test_ui_subgraph_promoted_widgets_override_inner_values():
    data = json.loads((GOLDEN / "subgraph_v1.json").read_text())
    instance = next(n for n in data["nodes"] if n["id"] == 10)
    sub = data["definitions"]["subgraphs"][0]
    # A widget-typed subgraph input "negative_text" feeding inner node 2's text, left unlinked on the instance.
    sub["inputs"].append({"id": "8a3d", "name": "negative_text", "type": "STRING", "linkIds": [5]})
    sub["links"].append({"id": 5, "origin_id": -10, "origin_slot": 1, "target_id": 2, "target_slot": 1,
                         "type": "STRING"})
    sub["nodes"][1]["inputs"][1]["link"] = 5
    instance["inputs"].append({"name": "negative_text", "type": "STRING", "widget": {"name": "negative_text"},
                               "link": None})
    instance["properties"]["proxyWidgets"] = [["1", "text"], ["-1", "negative_text"]]
    instance["widgets_values"] = ["a lighthouse at noon", "cartoon"]
    prompt = ck.Workflow.load(data).to_api()
    assert prompt["10:1"]["inputs"]["text"] == "a lighthouse at noon"
    assert prompt["10:2"]["inputs"]["text"] == "cartoon"
    instance["widgets_values"] = []  # no saved values: the inner widgets keep theirs
    prompt = ck.Workflow.load(data).to_api()
    assert prompt["10:1"]["inputs"]["text"] == "a lighthouse in a storm, dramatic"


def _strip_meta(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


@pytest.mark.parametrize("name", ["sd15_txt2img", "sd15_img2img", "sd15_lora", "sd15_hires_fix", "sdxl_txt2img"])
def test_to_ui_round_trips_through_the_ui_import(name):
    wf = templates.load(name)
    ui = wf.to_ui()
    assert ui["version"] == 0.4 and len(ui["nodes"]) == len(wf)
    again = ck.Workflow.from_ui(json.loads(json.dumps(ui)))
    assert _strip_meta(again.to_api()) == _strip_meta(wf.to_api())
    assert again["6"].title == "Positive Prompt"  # a changed title survives
    ksampler = next(n for n in ui["nodes"] if n["id"] == 3)
    assert ksampler["widgets_values"][:2] == [8566257, "fixed"]  # the page's control_after_generate slot
    xs = {n["id"]: n["pos"][0] for n in ui["nodes"]}
    assert xs[4] < xs[3] < xs[8] < xs[9]  # laid out along the data flow


def test_to_ui_of_a_dsl_workflow_with_a_converted_widget(reference_object_info):
    wf = ck.Workflow(reference_object_info)
    ckpt = wf.CheckpointLoaderSimple(ckpt_name="tiny-sd15.safetensors")
    seed = wf.PrimitiveInt(value=7)
    text = wf.CLIPTextEncode(text="a", clip=ckpt.CLIP)
    latent = wf.EmptyLatentImage(width=64, height=64)
    sampler = wf.KSampler(model=ckpt.MODEL, positive=text, negative=text, latent_image=latent, seed=seed)
    wf.SaveImage(images=wf.VAEDecode(samples=sampler, vae=ckpt.VAE))
    ui = wf.to_ui()
    ksampler = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    entry = next(e for e in ksampler["inputs"] if e["name"] == "seed")
    assert entry["widget"] == {"name": "seed"} and entry["link"] is not None  # a converted widget
    again = ck.Workflow.from_ui(ui, reference_object_info)
    assert _strip_meta(again.to_api()) == _strip_meta(wf.to_api())
