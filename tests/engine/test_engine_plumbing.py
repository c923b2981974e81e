"""Engine plumbing: one validation per run, cached folder listings and schema, previews only for listeners."""

from __future__ import annotations

import os
import pickle
import threading
import time

import pytest
import tiny_graphs

torch = pytest.importorskip("torch")

import comfykit as ck  # noqa: E402
import comfykit.graph.validate as validate_module  # noqa: E402
from comfykit.engine import Engine  # noqa: E402
from comfykit.events import LazyPreview  # noqa: E402
from comfykit.graph import builtin  # noqa: E402


@pytest.fixture
def root(tmp_path, models_dir):
    """A private models folder (the demo checkpoint linked in) and input folder, dated an hour back."""
    ckpts = tmp_path / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    demo = sorted((models_dir / "checkpoints").rglob("*.safetensors"))[0]
    os.symlink(demo, ckpts / demo.name)
    (tmp_path / "input").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "input" / "dot.png")
    age(tmp_path / "models", tmp_path / "models" / "checkpoints", tmp_path / "input")
    return tmp_path


def age(*paths) -> None:
    """Set mtimes an hour back: a folder changed just now is listed again each time (timestamp granularity)."""
    old = time.time() - 3600
    for path in paths:
        os.utime(path, (old, old))


@pytest.fixture
def eng(root):
    engine = Engine(root / "models", output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
                    device="cpu", previews="latent2rgb")
    yield engine
    engine.shutdown()


@pytest.fixture
def count_validations(monkeypatch):
    """Counts validate_prompt calls made through any module that imported it."""
    calls = []
    original = validate_module.validate_prompt

    def counted(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    import sys

    for name, module in list(sys.modules.items()):
        if name.startswith("comfykit") and getattr(module, "validate_prompt", None) is original:
            monkeypatch.setattr(module, "validate_prompt", counted)
    return calls


def scale(width: int) -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "dot.png"}},
            "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                         "width": width, "height": 8, "crop": "disabled"}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}


def built(engine, width: int):
    wf = engine.workflow()
    image = wf.LoadImage(image="dot.png")
    wf.PreviewImage(images=wf.ImageScale(image=image.IMAGE, upscale_method="nearest-exact", width=width, height=8,
                                         crop="disabled").IMAGE)
    return wf


def test_a_run_is_validated_once_whatever_it_is_given(eng, count_validations):
    inputs = [scale(10), built(eng, 11), ck.Workflow.from_api(scale(12)), ck.Workflow.from_api(scale(13)).to_ui()]
    for item in inputs:
        count_validations.clear()
        assert eng.run(item).ok
        assert len(count_validations) == 1, type(item)
    count_validations.clear()
    assert eng.execute(scale(14), prompt_id="direct").ok
    assert len(count_validations) == 1
    validated = eng.validate(scale(15))
    count_validations.clear()
    assert eng.execute(validated, prompt_id="trusted").ok  # validated already: runs as it is
    assert count_validations == []


def test_folder_listings_and_schema_are_cached_until_a_folder_changes(eng, root, monkeypatch):
    built_infos = []
    real = builtin.object_info
    monkeypatch.setattr(builtin, "object_info", lambda files=None: built_infos.append(files) or real(files))
    assert eng.run(scale(20)).ok
    scans, infos = eng.folders.scans, len(built_infos)
    for width in (21, 22, 23):
        assert eng.run(scale(width)).ok
    assert eng.folders.scans == scans and len(built_infos) == infos  # no directory read, no schema rebuilt
    # a new checkpoint, even in a new sub-folder, shows in the next run's schema
    sub = root / "models" / "checkpoints" / "more"
    sub.mkdir()
    (sub / "extra.safetensors").write_bytes(b"")
    assert "more/extra.safetensors" in eng.object_info()["CheckpointLoaderSimple"]["input"]["required"][
        "ckpt_name"][0]
    assert len(built_infos) == infos + 1
    (sub / "extra.safetensors").unlink()
    assert "more/extra.safetensors" not in eng.folders.list_files("checkpoints")


def test_an_interrupt_during_validation_stops_the_run(eng, monkeypatch):
    real = eng.validate

    def slow_validate(*args, **kwargs):
        eng.interrupt()  # arrives while the prompt is being validated
        return real(*args, **kwargs)

    monkeypatch.setattr(eng, "validate", slow_validate)
    result = eng.execute(scale(30), prompt_id="stopped")
    assert result.status == "interrupted" and result.executed == []
    monkeypatch.undo()
    assert eng.execute(scale(31), prompt_id="next").ok  # the next run starts clean


def test_previews_are_built_only_for_listeners(eng, monkeypatch):
    from comfykit.engine.sampling.preview import Previewer

    made = []
    real = Previewer.snapshot
    monkeypatch.setattr(Previewer, "snapshot", lambda self, x0: made.append(1) or real(self, x0))
    ckpt = os.listdir(eng.folders.folder("checkpoints"))[0]
    plain = eng.run(tiny_graphs.t2i(ckpt, steps=2, save=False))
    assert made == [] and not any(e.has_preview for e in plain.events)

    seen = []
    heard = eng.run(tiny_graphs.t2i(ckpt, steps=2, seed=1, save=False), on_event=seen.append)
    assert len(made) == 2 and [e.preview.size for e in seen if e.has_preview] == [(64, 64), (64, 64)]
    assert not any(e.has_preview for e in heard.events)

    off = eng.run(tiny_graphs.t2i(ckpt, steps=2, seed=2, save=False), on_event=seen.append, previews=False)
    assert len(made) == 2 and not any(e.has_preview for e in off.events)

    kept = eng.run(tiny_graphs.t2i(ckpt, steps=2, seed=3, save=False), keep_previews=True, previews=True)
    assert [e.preview.size for e in kept.events if e.has_preview] == [(64, 64), (64, 64)]


def test_iterating_a_job_gets_previews_made_in_the_reading_thread(eng, monkeypatch):
    threads = set()
    real = LazyPreview.image
    monkeypatch.setattr(LazyPreview, "image", lambda self: threads.add(threading.current_thread().name)
                        or real(self))
    ckpt = os.listdir(eng.folders.folder("checkpoints"))[0]
    job = eng.submit(tiny_graphs.t2i(ckpt, steps=3, seed=4, save=False, size=32))
    sizes = [e.preview.size for e in job if e.type == "progress" and e.has_preview]
    assert job.result().ok
    assert sizes and all(size == (32, 32) for size in sizes)  # a listener that came late still gets them
    assert threads == {threading.current_thread().name}  # the PIL image is not made on the sampling thread


@pytest.mark.slow
def test_a_20_step_result_with_previews_on_pickles_small(eng):
    ckpt = os.listdir(eng.folders.folder("checkpoints"))[0]
    result = eng.run(tiny_graphs.t2i(ckpt, steps=20, save=False), on_event=lambda event: None)
    assert result.ok and len([e for e in result.events if e.type == "progress"]) == 20
    assert len(pickle.dumps(result)) < 100_000


def test_a_cycle_is_refused_before_running(eng):
    prompt = scale(40)
    prompt["4"] = {"class_type": "ImageScale", "inputs": {"image": ["5", 0], "upscale_method": "nearest-exact",
                                                          "width": 8, "height": 8, "crop": "disabled"}}
    prompt["5"] = {"class_type": "ImageScale", "inputs": {"image": ["4", 0], "upscale_method": "nearest-exact",
                                                          "width": 8, "height": 8, "crop": "disabled"}}
    prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}
    with pytest.raises(ck.ValidationError, match="cycle"):
        eng.submit(prompt)
