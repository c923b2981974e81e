"""The ``comfykit`` command through ``main([...])``: generate, run (API and UI files, --set), serve, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from comfykit import cli

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--steps", "2", "--width", "64", "--height", "64", "--no-progress"]


def test_generate_without_checkpoint_offers_demo(tmp_path, capsys):
    rc = cli.main(["generate", "a sunset", "--models-dir", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "No checkpoint found" in err and "--demo" in err and "Traceback" not in err


def test_generate_demo_writes_png_with_metadata(tmp_path, capsys, models_dir):
    out = tmp_path / "pics" / "sunset.png"
    rc = cli.main(["generate", "a beautiful sunset", "--demo", "--models-dir", str(models_dir), "--seed", "5",
                   "-o", str(out), *FAST])
    assert rc == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as im:
        assert im.size == (64, 64)
        prompt = json.loads(im.text["prompt"])
    sampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")
    assert sampler["inputs"]["seed"] == 5 and sampler["inputs"]["steps"] == 2
    assert "a beautiful sunset" in [n["inputs"].get("text") for n in prompt.values()]


def test_generate_with_ckpt_file_outside_models(tmp_path, capsys, models_dir):
    ckpt = next((models_dir / "checkpoints").iterdir())
    out = tmp_path / "x.png"
    rc = cli.main(["generate", "a cat", "--ckpt", str(ckpt), "--models-dir", str(tmp_path / "none"),
                   "--seed", "1", "-o", str(out), *FAST])
    assert rc == 0, capsys.readouterr().err
    assert out.is_file()


def test_generate_unknown_ckpt_name_is_a_clean_error(tmp_path, capsys, models_dir):
    rc = cli.main(["generate", "a cat", "--ckpt", "nope", "--models-dir", str(models_dir), *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and "nope" in err and "Traceback" not in err


def api_workflow(tmp_path, ckpt):
    prompt = json.loads((ROOT / "workflows" / "sd15_txt2img.json").read_text())
    prompt["4"]["inputs"]["ckpt_name"] = ckpt
    prompt["5"]["inputs"].update(width=64, height=64)
    prompt["3"]["inputs"]["steps"] = 2
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(prompt))
    return path


def test_run_api_workflow_with_sets(tmp_path, capsys, models_dir):
    from comfykit import demo

    wf = api_workflow(tmp_path, demo.ensure_demo_checkpoint(models_dir))
    out = tmp_path / "out"
    rc = cli.main(["run", str(wf), "--set", "6.text=a cat", "--set", "3.seed=5", "--set", '9.filename_prefix="cli"',
                   "-o", str(out), "--models-dir", str(models_dir), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    saved = out / "cli_00001_.png"
    assert capsys.readouterr().out.strip() == str(saved)
    prompt = json.loads(Image.open(saved).text["prompt"])
    assert prompt["6"]["inputs"]["text"] == "a cat" and prompt["3"]["inputs"]["seed"] == 5


def test_run_ui_workflow(tmp_path, capsys, models_dir):
    from comfykit import demo

    ckpt = demo.ensure_demo_checkpoint(models_dir)
    rc = cli.main(["run", str(ROOT / "workflows" / "sd15_txt2img_ui.json"), "--set", f"4.ckpt_name={ckpt}",
                   "--set", "5.width=64", "--set", "5.height=64", "--set", "3.steps=1",
                   "-o", str(tmp_path / "o"), "--models-dir", str(models_dir), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert len(list((tmp_path / "o").glob("*.png"))) == 1


@pytest.mark.parametrize("bad, words", [
    (["--set", "99.text=x"], ["no node '99'"]),
    (["--set", "3.colour=1"], ["no input 'colour'", "seed"]),
    (["--set", "3seed"], ["NODE.INPUT=VALUE"]),
    (["--set", "3.sampler_name=eulr"], ["sampler_name", "euler"]),
])
def test_run_bad_input_is_a_clean_error(tmp_path, capsys, models_dir, bad, words):
    from comfykit import demo

    wf = api_workflow(tmp_path, demo.ensure_demo_checkpoint(models_dir))
    rc = cli.main(["run", str(wf), *bad, "--models-dir", str(models_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    for word in words:
        assert word in err


def test_run_missing_file(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "missing.json")]) == 1
    assert "missing.json" in capsys.readouterr().err


def test_serve_passes_its_arguments(monkeypatch):
    import comfykit.server

    seen = []
    monkeypatch.setattr(comfykit.server, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["serve", "--port", "9999", "--cpu"]) == 0
    assert seen == [["--port", "9999", "--cpu"]]
