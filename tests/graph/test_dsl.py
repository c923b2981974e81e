"""The builder DSL as a notebook user drives it: build, read, edit, validate, compile."""

from __future__ import annotations

import copy
import inspect
import json
import pickle

import pytest

import comfykit as ck
from comfykit.errors import ValidationError
from comfykit.graph import InputRef, Output


def build():
    wf = ck.Workflow()
    ckpt = wf.CheckpointLoaderSimple(ckpt_name="v1-5-pruned-emaonly.safetensors")
    pos = wf.CLIPTextEncode(text="a beautiful sunset", clip=ckpt.CLIP)
    neg = wf.CLIPTextEncode(text="bad quality", clip=ckpt.CLIP)
    latent = wf.EmptyLatentImage(width=512, height=512)
    out = wf.KSampler(model=ckpt.MODEL, positive=pos, negative=neg, latent_image=latent,
                      seed=42, steps=20, cfg=7.0, sampler_name="euler", scheduler="normal")
    wf.SaveImage(images=wf.VAEDecode(samples=out, vae=ckpt.VAE), filename_prefix="sunset")
    return wf, ckpt, pos, neg, latent, out


def test_readme_example_compiles_to_comfyui_api_format():
    wf, *_ = build()
    assert wf.to_api() == {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a beautiful sunset", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "bad quality", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 42, "steps": 20, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal",
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "sunset"}},
    }


def test_outputs_by_name_lowercase_index_and_unpacking():
    wf, ckpt, *_ = build()
    assert ckpt.MODEL == ckpt.model == ckpt[0] == ckpt["MODEL"]
    assert (ckpt.VAE.name, ckpt.VAE.type, ckpt.VAE.index) == ("VAE", "VAE", 2)
    model, clip, vae = ckpt
    assert clip == ckpt.CLIP and repr(vae) == "#1.VAE"
    with pytest.raises(IndexError):
        ckpt[3]


def test_defaults_fill_unset_widgets_and_required_widgets_with_defaults():
    wf = ck.Workflow()
    latent = wf.EmptyLatentImage()
    sampler = wf.KSampler()
    assert latent.inputs == {"width": 512, "height": 512, "batch_size": 1}
    assert (sampler.steps.value, sampler.cfg.value, sampler.sampler_name.value, sampler.scheduler.value) == \
        (20, 8.0, "euler", "simple")
    with pytest.raises(ValidationError) as caught:
        wf.to_api()
    missing = {e["details"] for e in caught.value.node_errors["2"]["errors"]}
    assert missing == {"model", "positive", "negative", "latent_image"}
    assert "node 2 (KSampler) input 'model'" in str(caught.value)


def test_editing_updates_the_graph_and_keeps_ids():
    wf, ckpt, pos, neg, latent, out = build()
    other = wf.CheckpointLoaderSimple(ckpt_name="other.safetensors")
    pos.text = "a cat"
    out.steps = 30
    out.model = other.MODEL
    out.seed.set(7)
    api = wf.to_api()
    assert api["2"]["inputs"]["text"] == "a cat"
    assert api["5"]["inputs"]["steps"] == 30 and api["5"]["inputs"]["seed"] == 7
    assert api["5"]["inputs"]["model"] == ["8", 0]
    assert list(api) == ["1", "2", "3", "4", "5", "6", "7", "8"]
    with pytest.raises(ValidationError):
        out.steps = 0
    with pytest.raises(ValidationError):
        out.latent_image = ckpt.VAE
    assert out.steps.value == 30 and out.latent_image == latent[0]  # failed edits change nothing


def test_failed_construction_does_not_shift_later_ids():
    wf = ck.Workflow()
    wf.EmptyLatentImage()
    with pytest.raises(ValidationError):
        wf.EmptyLatentImage(width=1)
    assert wf.EmptyLatentImage().id == "2"


def test_access_iteration_remove_and_titles():
    wf, ckpt, pos, neg, latent, out = build()
    assert wf["5"] is out and wf[5] is out and "5" in wf and out in wf
    assert [n.id for n in wf] == ["1", "2", "3", "4", "5", "6", "7"] and len(wf) == 7
    assert (out.id, out.class_type) == ("5", "KSampler")
    assert out.inputs["model"] == ckpt.MODEL
    pos.title = "Positive"
    api = wf.to_api()
    assert api["2"]["_meta"] == {"title": "Positive"}
    assert ck.Workflow.from_api(api).to_api() == api
    wf.remove(neg)
    assert "3" not in wf and "negative" not in out.inputs
    with pytest.raises(ValidationError, match="negative"):
        wf.to_api()
    assert wf.EmptyLatentImage().id == "8"


def test_input_refs():
    wf, ckpt, pos, neg, latent, out = build()
    steps = out.steps
    assert isinstance(steps, InputRef)
    assert steps == 20 and steps == out.steps and steps != out.cfg
    assert len({steps, out.steps, out.cfg}) == 2
    assert (steps.node, steps.name, steps.value) == (out, "steps", 20)
    assert (steps.spec.type, steps.spec.default, steps.spec.min, steps.spec.max) == ("INT", 20, 1, 10000)
    assert out.cfg.spec.step == 0.1 and out.cfg.spec.round == 0.01
    assert out.seed.spec.control_after_generate and pos.text.spec.multiline
    assert "euler_ancestral" in out.sampler_name.spec.choices
    assert (int(steps), float(out.cfg), str(pos.text), bool(steps)) == (20, 7.0, "a beautiful sunset", True)
    assert f"{out.cfg:.1f}" == "7.0"
    assert [0, 1, 2][InputRef(latent, "batch_size")] == 1  # __index__ for INT
    assert repr(steps) == "20"
    steps.set(25)
    assert out.steps == 25
    assert isinstance(out.model, Output) and out.model == ckpt.MODEL  # a linked input reads as its output
    names = {(r.node.id, r.name) for r in wf.inputs()}
    assert ("5", "steps") in names and ("2", "text") in names and ("5", "model") not in names


@pytest.mark.parametrize("kwargs, kind, words", [
    ({"sampler_name": "eulr_ancestral"}, "value_not_in_list", ["did you mean 'euler_ancestral'?"]),
    ({"steps": 0}, "value_smaller_than_min", ["'steps'", "1 to 10000"]),
    ({"cfg": 101}, "value_bigger_than_max", ["'cfg'", "101"]),
    ({"steps": "four"}, "invalid_input_type", ["'four'", "INT"]),
])
def test_bad_values_raise_with_comfyui_errors(kwargs, kind, words):
    wf = ck.Workflow()
    with pytest.raises(ValidationError) as caught:
        wf.KSampler(**kwargs)
    err = caught.value.node_errors["1"]["errors"][0]
    assert err["type"] == kind and caught.value.node_errors["1"]["class_type"] == "KSampler"
    assert "node 1 (KSampler)" in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_values_are_coerced_like_comfyui_but_not_silently_changed():
    wf = ck.Workflow()
    sampler = wf.KSampler(steps="12", cfg=7, seed=3.0)
    assert (sampler.steps.value, sampler.cfg.value, sampler.seed.value) == (12, 7.0, 3)
    with pytest.raises(ValidationError, match="whole number"):
        wf.KSampler(steps=4.5)


def test_typos_and_wrong_links_fail_at_build_time():
    wf, ckpt, pos, *_ = build()
    with pytest.raises(ValidationError, match="did you mean 'steps'"):
        wf.KSampler(stepz=4)
    with pytest.raises(AttributeError, match="did you mean 'KSampler'"):
        wf.KSamplr(steps=4)
    with pytest.raises(ValidationError, match="did you mean 'KSampler'"):
        wf.add("KSamplerr")
    with pytest.raises(ValidationError) as caught:
        wf.CLIPTextEncode(text="x", clip=ckpt.VAE)
    assert caught.value.node_errors[next(iter(caught.value.node_errors))]["errors"][0]["details"] == \
        "clip, received_type(VAE) mismatch input_type(CLIP)"
    with pytest.raises(ValidationError, match="pick one: #1.MODEL, #1.CLIP, #1.VAE"):
        wf.KSampler(model=ckpt)
    with pytest.raises(ValidationError, match="takes a link to a MODEL output"):
        wf.KSampler(model="v1-5.safetensors")
    with pytest.raises(AttributeError, match="did you mean 'steps'"):
        wf["5"].stepz  # noqa: B018
    with pytest.raises(AttributeError, match="output"):
        ckpt.MODEL = 3
    other = ck.Workflow().EmptyLatentImage()
    with pytest.raises(ValidationError, match="another workflow"):
        wf.KSampler(latent_image=other)


def test_compile_finds_cycles_and_missing_outputs():
    wf = ck.Workflow()
    latent = wf.EmptyLatentImage()
    a = wf.LatentUpscaleBy(samples=latent)
    b = wf.LatentUpscaleBy(samples=a)
    with pytest.raises(ValidationError, match="no outputs"):
        wf.to_api()
    wf.SaveImage(images=wf.VAEDecode(samples=b, vae=wf.VAELoader(vae_name="x.safetensors")))
    a.samples = b
    with pytest.raises(ValidationError, match="cycle: #2 LatentUpscaleBy -> #3 LatentUpscaleBy -> #2"):
        wf.validate()
    a.samples = latent
    assert wf.validate().outputs == ["6"]


def test_file_inputs_accept_any_name_without_file_lists_but_not_with_them():
    assert ck.Workflow().CheckpointLoaderSimple(ckpt_name="anything.safetensors").ckpt_name == \
        "anything.safetensors"
    wf = ck.Workflow(ck.Schema.builtin(files={"checkpoints": ["a.safetensors", "b.safetensors"]}))
    assert wf.CheckpointLoaderSimple().ckpt_name == "a.safetensors"  # a combo's first option, as the page picks
    with pytest.raises(ValidationError) as caught:
        wf.CheckpointLoaderSimple(ckpt_name="c.safetensors")
    assert caught.value.node_errors["2"]["errors"][0]["details"] == \
        "ckpt_name: 'c.safetensors' not in ['a.safetensors', 'b.safetensors']"


def test_notebook_introspection():
    wf, ckpt, pos, neg, latent, out = build()
    assert {"KSampler", "CLIPTextEncode", "to_api", "remove"} <= set(dir(wf))
    assert {"MODEL", "CLIP", "VAE", "ckpt_name", "id"} <= set(dir(ckpt))
    sig = inspect.signature(wf.KSampler)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in sig.parameters.values())
    assert sig.parameters["steps"].default == 20 and sig.parameters["model"].default is inspect.Parameter.empty
    doc = wf.KSampler.__doc__
    for text in ("steps: INT = 20 [1..10000]", "'euler_ancestral'", "model: MODEL (link)", "LATENT", "default"):
        assert text in doc
    assert wf.KSampler.__name__ == "KSampler"
    import pydoc

    page = pydoc.render_doc(wf.KSampler, renderer=pydoc.plaintext)
    assert "KSampler(*, model: 'MODEL', seed: 'INT' = 0" in page and "[1..10000]" in page
    text = repr(wf)
    assert "sampler = wf.KSampler(model=ckpt.MODEL" in text and "positive=positive" in text
    html = wf._repr_html_()
    assert "#1.MODEL" in html and "KSampler" in html and "<table" in html
    assert repr(out).startswith("<#5 KSampler(")


def test_copy_and_pickle():
    wf, *_ = build()
    wf.KSampler.__doc__  # noqa: B018 - a cached factory must not break pickling
    for clone in (copy.deepcopy(wf), pickle.loads(pickle.dumps(wf)), copy.copy(wf)):
        assert clone.to_api() == wf.to_api()
    clone = copy.deepcopy(wf)
    clone["5"].steps = 3
    assert wf["5"].steps == 20


def test_schema_sources(tmp_path, reference_object_info, monkeypatch):
    path = tmp_path / "object_info.json"
    path.write_text(json.dumps(reference_object_info))

    class Backend:
        def object_info(self):
            return reference_object_info

    for source in (reference_object_info, str(path), path, Backend()):
        assert len(ck.Workflow(source).schema) == 495

    class Response:
        def raise_for_status(self):
            pass

        def json(self):
            return reference_object_info

    seen = []
    import requests

    monkeypatch.setattr(requests, "get", lambda url, timeout: seen.append(url) or Response())
    assert len(ck.Workflow("http://127.0.0.1:8188").schema) == 495
    assert seen == ["http://127.0.0.1:8188/object_info"]
    with pytest.raises(ck.ComfykitError, match="does not exist"):
        ck.Workflow(str(tmp_path / "nope.json"))
    with pytest.raises(TypeError, match="object_info"):
        ck.Workflow(42)


def test_meta_titles_like_the_comfyui_page():
    wf = ck.Workflow(meta_titles=True)
    latent = wf.EmptyLatentImage()
    wf.LatentUpscaleBy(samples=latent, _title="Bigger")
    api = wf.to_api(validate=False)
    assert api["1"]["_meta"] == {"title": "Empty Latent Image"} and api["2"]["_meta"] == {"title": "Bigger"}
    loaded = ck.Workflow.from_api(api)
    assert loaded.meta_titles and loaded["1"].title is None and loaded["2"].title == "Bigger"
    assert loaded.to_api(validate=False) == api
    assert "ck.Workflow(meta_titles=True)" in loaded.to_python() and "_title='Bigger'" in loaded.to_python()


def test_jedi_completes_node_classes_input_names_and_outputs():
    jedi = pytest.importorskip("jedi")
    wf = ck.Workflow()
    ckpt = wf.CheckpointLoaderSimple(ckpt_name="x.safetensors")
    ns = {"wf": wf, "ckpt": ckpt}
    assert [c.name for c in jedi.Interpreter("wf.KSampler(st", [ns]).complete()] == ["steps="]
    assert {"KSampler", "KSamplerAdvanced"} <= {c.name for c in jedi.Interpreter("wf.KSam", [ns]).complete()}
    assert {"MODEL", "CLIP", "VAE"} <= {c.name for c in jedi.Interpreter("ckpt.", [ns]).complete()}


def test_diff_lists_structural_changes():
    wf, ckpt, pos, neg, latent, out = build()
    before = copy.deepcopy(wf)
    out.steps = 30
    out.model = wf.LoraLoaderModelOnly(model=ckpt.MODEL, lora_name="l.safetensors").MODEL
    pos.title = "Positive"
    wf.remove("7")
    assert wf.diff(before) == [
        "~ #2 CLIPTextEncode title: None -> 'Positive'",
        "~ #5 KSampler.model: #1[0] -> #8[0]",
        "~ #5 KSampler.steps: 20 -> 30",
        "+ #8 LoraLoaderModelOnly",
        "- #7 SaveImage",
    ]
    assert wf.diff(wf) == []
