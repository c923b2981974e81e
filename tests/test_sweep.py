"""ck.sweep: every combination of a few inputs, cached upstream nodes, labelled grids, the workflow restored."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import matplotlib
import pytest

import comfykit as ck

matplotlib.use("Agg")

# the fake backend lives beside the widget tests; load it by path so no test package is needed
_spec = importlib.util.spec_from_file_location("comfykit_test_ui_fakes", Path(__file__).parent / "ui" / "ui_fakes.py")
fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fakes)


def _titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_two_axes_give_an_xy_grid_and_run_the_loader_once():
    wf, pos, neg, lat, out = fakes.txt2img()
    before = wf.to_api()
    backend = fakes.FakeBackend()
    seen = []
    s = ck.sweep(wf, {out.cfg: [4, 7, 10], out.steps: [2, 3]}, backend, progress=True,
                 on_event=lambda e: seen.append(e.type))
    assert seen.count("execution_success") == 6 and seen.count("progress") == 3 * 2 + 3 * 3

    assert len(s) == 6 and set(s.images) == {(c, n) for c in (4, 7, 10) for n in (2, 3)}
    assert [p["5"]["inputs"]["cfg"] for p in backend.submitted] == [4, 7, 10, 4, 7, 10]  # x varies fastest
    assert s.results[(7, 3)].prompt["5"]["inputs"] == {**before["5"]["inputs"], "cfg": 7, "steps": 3}
    assert s[(7, 3)] is s.results[(7, 3)].image
    runs = Counter(s.executed)
    assert runs["1"] == 1 and runs["2"] == 1 and runs["3"] == 1  # loader and text encoders: once
    assert runs["5"] == 6
    fig = s.figure
    assert len(fig.axes) == 6 and len(s.figures) == 1
    assert _titles(fig)[:3] == ["cfg=4", "cfg=7", "cfg=10"]
    assert [fig.axes[i].get_ylabel() for i in (0, 3)] == ["steps=2", "steps=3"]
    assert wf.to_api() == before  # inputs restored


def test_a_third_axis_makes_one_grid_per_value_and_tuples_name_inputs():
    wf, pos, neg, lat, out = fakes.txt2img()
    s = ck.sweep(wf, {(out, "seed"): [1, 2], out.cfg: [5.0], out.sampler_name: ["euler", "heun", "dpm_2"]},
                 fakes.FakeBackend(), progress=False)
    assert len(s) == 6 and len(s.figures) == 3 and s.figure is s.figures[0]
    assert [f._suptitle.get_text() for f in s.figures] == ["sampler_name=euler", "sampler_name=heun",
                                                             "sampler_name=dpm_2"]
    assert all(_titles(f) == ["seed=1", "seed=2"] and f.axes[0].get_ylabel() == "cfg=5.0" for f in s.figures)
    assert s.results[(2, 5.0, "heun")].prompt["5"]["inputs"]["sampler_name"] == "heun"


def test_one_axis_is_a_single_labelled_row_and_same_named_inputs_get_node_ids():
    wf, pos, neg, lat, out = fakes.txt2img()
    s = ck.sweep(wf, {pos.text: ["a fox", "a cat"], neg.text: ["blurry"]}, fakes.FakeBackend(), progress=False)
    assert [name for name, _ in s.axes] == ["text#2", "text#3"]
    assert _titles(s.figure) == ["text#2=a fox", "text#2=a cat"]
    s1 = ck.sweep(wf, {out.steps: [2, 3]}, fakes.FakeBackend(), progress=False)
    assert _titles(s1.figure) == ["steps=2", "steps=3"] and s1[3] is s1.images[(3,)]


def test_bad_axes_fail_before_anything_runs_and_leave_the_workflow_alone():
    wf, pos, neg, lat, out = fakes.txt2img()
    backend = fakes.FakeBackend()
    with pytest.raises(ck.ValidationError, match=r"sweep axis 'steps' \(node 5\): value 0 is not accepted"):
        ck.sweep(wf, {out.cfg: [4, 7], out.steps: [2, 0]}, backend, progress=False)
    assert backend.submitted == [] and out.steps.value == 4 and out.cfg.value == 7.0
    with pytest.raises(TypeError, match="not its current value"):
        ck.sweep(wf, {7.0: [1, 2]}, backend)
    with pytest.raises(TypeError, match="linked output, not a widget input"):
        ck.sweep(wf, {out.positive: [1]}, backend)
    with pytest.raises(ValueError, match="at most 3 axes"):
        ck.sweep(wf, {out.cfg: [1], out.steps: [1], out.seed: [1], lat.width: [64]}, backend)
    with pytest.raises(ValueError, match="no values"):
        ck.sweep(wf, {out.cfg: []}, backend)


def test_a_failing_run_names_its_combination_and_restores_the_workflow():
    wf, pos, neg, lat, out = fakes.txt2img()
    with pytest.raises(ck.ExecutionError) as info:
        ck.sweep(wf, {out.cfg: [4, 7]}, fakes.FakeBackend(fail_node="5"), progress=False)
    assert "in sweep combination cfg=4" in info.value.__notes__
    assert out.cfg.value == 7.0


def test_sweep_on_the_engine_loads_the_checkpoint_once(models_dir, tmp_path):
    from comfykit import demo

    wf, pos, neg, lat, out = fakes.txt2img(demo.ensure_demo_checkpoint(models_dir), steps=1, width=32, height=32)
    with ck.Engine(models_dir, output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp") as engine:
        s = ck.sweep(wf, {out.cfg: [2.0, 8.0], out.steps: [1, 2]}, engine, progress=False)
    runs = Counter(s.executed)
    assert runs["1"] == 1 and runs["2"] == 1 and runs["3"] == 1 and runs["5"] == 4
    assert all(r.ok and r.image.size == (32, 32) for r in s.results.values())
    assert s.results[(8.0, 2)].prompt["5"]["inputs"]["cfg"] == 8.0
    assert s.images[(2.0, 1)].tobytes() != s.images[(8.0, 1)].tobytes()
    assert _titles(s.figure) == ["cfg=2.0", "cfg=8.0", "", ""]
    assert [s.figure.axes[i].get_ylabel() for i in (0, 2)] == ["steps=1", "steps=2"]
    assert out.cfg.value == 7.0 and out.steps.value == 1


def test_sweep_and_plot_import_no_heavy_packages():
    import subprocess
    import sys

    code = ("import sys, comfykit as ck, comfykit.sweep, comfykit.plot; assert callable(ck.sweep); "
            "print(sorted(m for m in ('torch', 'matplotlib', 'ipywidgets', 'aiohttp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
