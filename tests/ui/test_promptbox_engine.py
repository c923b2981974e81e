"""PromptBox on the real embedded Engine and the tiny random-weight demo checkpoint (skips without torch)."""

from __future__ import annotations

import threading

import pytest
from ui_fakes import txt2img

import comfykit as ck


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    eng = ck.Engine(models_dir, output_dir=tmp_path_factory.mktemp("out"), temp_dir=tmp_path_factory.mktemp("tmp"))
    yield eng
    eng.shutdown()


@pytest.fixture
def graph(models_dir):
    from comfykit import demo

    return txt2img(demo.ensure_demo_checkpoint(models_dir), steps=3, width=32, height=32)


def test_generate_on_the_engine_streams_previews_fills_progress_and_the_gallery(engine, graph, tmp_path):
    wf, pos, neg, lat, out = graph
    box = ck.ui.PromptBox(wf, engine, fields=[pos.text, neg.text, out.seed, out.steps, out.cfg], save_dir=tmp_path)
    previews, peaks = [], []
    box.preview.observe(lambda ch: previews.append(bytes(ch["new"])), names="value")
    box.progress.observe(lambda ch: peaks.append((ch["new"], box.progress.max)), names="value")

    box.set(out.steps, "many")  # a user's typo is reported in the widget, nothing is submitted
    assert box.click() is None and box.error_message == "steps: 'many' is not a whole number"

    box.set(pos.text, "a lighthouse at dusk")
    box.set(out.seed, 5)
    box.set(out.steps, 3)
    assert box.click() is not None
    result = box.wait(timeout=300)

    assert result is not None and result.ok, box.error_message
    assert box.error_message == ""
    assert box.preview_updates == 3 and len(set(previews)) >= 2  # the preview changed while sampling
    assert (3, 3) in peaks and box.progress.value == box.progress.max == 3
    assert "done" in box.status.value
    assert len(box.gallery) == 1 and box.gallery[0].image.size == (32, 32)
    assert box.gallery[0].settings["seed"] == 5 and box.gallery[0].settings["positive"] == "a lighthouse at dusk"
    assert box.gallery[0].save().is_file()


def test_stop_ends_a_long_engine_run_early(engine, graph):
    wf, pos, neg, lat, out = graph
    box = ck.ui.PromptBox(wf, engine, fields=[out.steps])
    box.set(out.steps, 1000)
    stepping = threading.Event()
    box.progress.observe(lambda ch: ch["new"] >= 1 and stepping.set(), names="value")
    box.click()
    assert stepping.wait(300), box.error_message
    box.stop_button.click()
    assert box.wait(timeout=300) is None
    assert isinstance(box.exception, ck.InterruptedError)
    assert box.progress.value < 1000 == box.progress.max
    assert "stopped" in box.status.value and box.error_message == "" and len(box.gallery) == 0


def test_a_missing_checkpoint_is_reported_with_its_node(engine):
    wf, pos, neg, lat, out = txt2img("no-such-model.safetensors", steps=1, width=32, height=32)
    box = ck.ui.PromptBox(wf, engine, fields=[out.steps])
    box.click()
    box.wait(timeout=120)
    assert box.result is None and "no-such-model.safetensors" in box.error_message
    assert "1" in box.error_message and "CheckpointLoaderSimple" in box.error_message
    assert "Traceback" not in box.error_message
