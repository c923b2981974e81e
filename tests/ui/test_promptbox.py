"""PromptBox driven headlessly against a fake backend that emits ComfyUI's events from a worker thread."""

from __future__ import annotations

import json
import threading

import pytest
from PIL import Image
from ui_fakes import FakeBackend, txt2img

import comfykit as ck
from comfykit.errors import ValidationError
from comfykit.graph.builtin import SAMPLER_NAMES


@pytest.fixture
def graph():
    return txt2img()


def _box(graph, backend, **kw):
    wf, pos, neg, lat, out = graph
    return ck.ui.PromptBox(wf, backend, fields=[pos.text, neg.text, out.seed, out.steps, out.cfg], **kw)


def test_default_form_picks_prompts_sampler_settings_and_size_with_fitting_widgets(graph):
    wf = graph[0]
    box = ck.ui.PromptBox(wf, FakeBackend())
    labels = [f.label for f in box.fields]
    assert labels == ["positive", "negative", "width", "height", "batch_size", "seed", "steps", "cfg",
                      "sampler_name", "scheduler"]
    kinds = {f.label: type(f.widget).__name__ for f in box.fields}
    assert kinds["positive"] == kinds["negative"] == "Textarea"
    assert kinds["seed"] == "Text"            # 0..2**64-1 does not fit a slider or a JS number
    assert kinds["cfg"] == "FloatSlider"
    assert kinds["sampler_name"] == "Dropdown"
    cfg = box.field(graph[4].cfg).widget
    assert (cfg.min, cfg.max, cfg.step, cfg.value) == (0.0, 100.0, 0.1, 7.0)
    width = box.field(graph[3].width).widget
    assert type(width).__name__ == "IntSlider" and (width.min, width.max, width.step) == (16, 16384, 8)
    assert list(box.field(graph[4].sampler_name).widget.options) == list(SAMPLER_NAMES)
    assert box.field(graph[4].seed).control.value == "randomize"
    # every widget's state serialises, i.e. a Jupyter front end can draw the whole box
    from ipywidgets.embed import embed_data

    state = embed_data(views=[box.widget])["manager_state"]["state"]
    assert sum(m["model_name"] == "TextareaModel" for m in state.values()) == 2


def test_fields_accept_input_refs_and_node_name_tuples(graph):
    wf, pos, neg, lat, out = graph
    box = ck.ui.PromptBox(wf, FakeBackend(), fields=[(pos, "text"), out.steps])
    assert [f.label for f in box.fields] == ["positive", "steps"]
    assert box.field((out, "steps")) is box.field(out.steps)
    with pytest.raises(KeyError, match="'cfg' of node 5 is not in this PromptBox"):
        box.field(out.cfg)
    with pytest.raises(TypeError, match="not its current value"):
        ck.ui.PromptBox(wf, FakeBackend(), fields=["a red fox"])


def test_generate_runs_in_background_with_preview_progress_and_gallery(graph):
    wf, pos, neg, lat, out = graph
    backend = FakeBackend()
    box = _box(graph, backend)
    box.field(out.seed).control.value = "fixed"
    previews = []
    box.preview.observe(lambda ch: previews.append(bytes(ch["new"])), names="value")
    peaks = []
    box.progress.observe(lambda ch: peaks.append((ch["new"], box.progress.max)), names="value")
    box.set(pos.text, "a blue heron")
    box.set(out.seed, 1234)
    box.set(out.steps, 6)

    job = box.click()
    result = box.wait(timeout=10)

    assert job is not None and result is not None and result.ok
    assert backend.submitted[-1]["5"]["inputs"]["steps"] == 6
    assert backend.submitted[-1]["2"]["inputs"]["text"] == "a blue heron"
    assert len(set(previews)) == 6 and box.preview_updates == 6  # one new preview per sampler step
    assert (6, 6) in peaks and box.progress.value == box.progress.max == 6
    assert "done" in box.status.value and box.error.value == ""
    assert len(box.gallery) == 1
    entry = box.gallery[0]
    assert entry.image is result.image
    assert entry.settings == {"positive": "a blue heron", "negative": "blurry", "seed": 1234, "steps": 6,
                              "cfg": 7.0}
    assert "seed=1234" in entry.label.value
    assert box.stop_button.disabled


def test_invalid_field_values_are_shown_in_the_widget_not_raised(graph):
    wf, pos, neg, lat, out = graph
    backend = FakeBackend()
    box = _box(graph, backend)
    box.set(out.seed, "twelve")
    assert box.click() is None
    assert box.error_message == "seed: 'twelve' is not a whole number"
    assert "seed: &#x27;twelve&#x27; is not a whole number" in box.error.value
    box.set(out.seed, "12")
    box.set(out.steps, "0")
    assert box.click() is None
    assert box.error_message == "steps: 0 is out of range, use a value from 1 to 10000"
    assert "Traceback" not in box.error.value and backend.submitted == []
    box.set(out.steps, "3")
    box.click()
    assert box.wait(10).ok and box.error.value == ""


def test_a_failing_node_is_named_in_the_widget(graph):
    box = _box(graph, FakeBackend(fail_node="5"))
    box.click()
    assert box.wait(10) is None
    assert box.error_message == "Node 5 (KSampler) failed: RuntimeError: boom"
    assert "Node 5 (KSampler) failed" in box.error.value
    assert "Traceback" not in box.error.value
    assert isinstance(box.exception, ck.ExecutionError) and len(box.gallery) == 0


def test_a_prompt_the_backend_refuses_is_shown(graph):
    class Refusing(FakeBackend):
        def submit(self, workflow, **kw):
            raise ValidationError("Prompt outputs failed validation\n  node 1 (CheckpointLoaderSimple) input "
                                  "'ckpt_name': Value not in list")

    box = _box(graph, Refusing())
    assert box.click() is None
    assert "node 1 (CheckpointLoaderSimple) input &#x27;ckpt_name&#x27;" in box.error.value
    assert "not started" in box.status.value


def test_stop_ends_a_long_run_early(graph):
    wf, pos, neg, lat, out = graph
    box = _box(graph, FakeBackend(step_delay=0.01))
    box.set(out.steps, 2000)
    started = threading.Event()
    box.progress.observe(lambda ch: ch["new"] >= 3 and started.set(), names="value")
    box.click()
    assert started.wait(10)
    box.stop_button.click()
    assert box.wait(10) is None
    assert box.progress.value < 2000 and box.progress.max == 2000
    assert "stopped at node 5" in box.status.value
    assert isinstance(box.exception, ck.InterruptedError) and box.error.value == "" and len(box.gallery) == 0


def test_seed_control_after_generate(graph):
    wf, pos, neg, lat, out = graph
    box = _box(graph, FakeBackend(), seed=0)
    seed = box.field(out.seed)
    box.set(out.seed, 41)
    seed.control.value = "increment"
    box.click()
    box.wait(10)
    assert seed.widget.value == "42" and box.gallery[0].settings["seed"] == 41
    seed.control.value = "fixed"
    box.click()
    box.wait(10)
    assert seed.widget.value == "42"
    seed.control.value = "randomize"
    box.click()
    box.wait(10)
    assert seed.widget.value != "42" and 0 <= int(seed.widget.value) < 2**64
    before = seed.widget.value
    seed.dice.click()
    assert seed.widget.value != before
    assert [e.settings["seed"] for e in box.gallery] == [41, 42, 42]


def test_save_button_writes_a_png_carrying_the_settings(graph, tmp_path):
    wf, pos, neg, lat, out = graph
    box = _box(graph, FakeBackend(), save_dir=tmp_path)
    box.set(out.seed, 77)
    box.click()
    box.wait(10)
    entry = box.gallery[0]
    entry.save_button.click()
    assert entry.path is not None and entry.path.parent == tmp_path and entry.path.name.endswith("_77.png")
    with Image.open(entry.path) as im:
        settings = json.loads(im.text["comfykit"])
        prompt = json.loads(im.text["prompt"])
    assert settings["seed"] == 77 and settings["positive"] == "a red fox in the snow"
    assert prompt["5"]["inputs"]["seed"] == 77
    assert "saved" in entry.label.value and entry.save_button.disabled
