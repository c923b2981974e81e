"""The ``comfykit`` command through ``main([...])``: generate, run (API and UI files, --set), serve, errors."""

from __future__ import annotations

import json
import subprocess
import sys
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


# -- the first hour ------------------------------------------------------------------------------------------
def _hidden(module: str, *argv: str) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter where ``module`` cannot be imported (as without its extra)."""
    code = (f"import sys; sys.modules[{module!r}] = None; from comfykit.cli import main; "
            f"sys.exit(main({list(argv)!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", [["serve", "--help"], ["serve"], ["serve", "--port", "0"]])
def test_serve_without_aiohttp_says_what_to_install(argv):
    done = _hidden("aiohttp", *argv)
    assert done.returncode == 1
    assert "pip install 'comfykit[server]'" in done.stderr and "Traceback" not in done.stderr


def test_generate_without_torch_says_what_to_install():
    done = _hidden("torch", "generate", "a cat", "--demo")
    assert done.returncode == 1
    assert "pip install 'comfykit[engine]'" in done.stderr and "Traceback" not in done.stderr


def test_version_and_defaults_in_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip().startswith("comfykit ")
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 20; 10 with --demo)", "(default: 8.0)", "(default: euler)", "(default: random)"):
        assert default in text


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--width", "0"), ("--height", "-8")])
def test_demo_refuses_bad_values_like_everything_else(tmp_path, capsys, models_dir, flag, value):
    rc_demo = cli.main(["generate", "a cat", "--demo", "--models-dir", str(models_dir), flag, value,
                        "--no-progress"])
    err_demo = capsys.readouterr().err
    ckpt = next((models_dir / "checkpoints").iterdir())
    rc_plain = cli.main(["generate", "a cat", "--ckpt", str(ckpt), "--models-dir", str(models_dir), flag, value,
                         "--no-progress"])
    err_plain = capsys.readouterr().err
    assert rc_demo == rc_plain == 1 and "Traceback" not in err_demo
    name = {"--steps": "steps", "--width": "width", "--height": "height"}[flag]
    assert f"input '{name}'" in err_demo and f"input '{name}'" in err_plain


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_bad_device_is_a_clean_error(tmp_path, capsys, models_dir, device):
    rc = cli.main(["generate", "a cat", "--demo", "--models-dir", str(models_dir), "--device", device, *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "--device" in err and "cpu" in err


def test_run_on_a_non_json_file_says_what_it_needs(capsys):
    rc = cli.main(["run", str(ROOT / "README.md")])
    err = capsys.readouterr().err
    assert rc == 1 and "README.md is not a JSON workflow" in err and "line 1 column 1" in err
    assert "Export (API)" in err


@pytest.mark.parametrize("suffix,fmt", [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP"), (".png", "PNG")])
def test_generate_writes_the_format_of_the_suffix(tmp_path, capsys, models_dir, suffix, fmt):
    out = tmp_path / f"out{suffix}"
    rc = cli.main(["generate", "a cat", "--demo", "--models-dir", str(models_dir), "--seed", "1", "-o", str(out),
                   *FAST])
    assert rc == 0, capsys.readouterr().err
    with Image.open(out) as img:
        assert img.format == fmt and img.size == (64, 64)


def test_generate_refuses_an_unknown_suffix_before_running(tmp_path, capsys, models_dir):
    rc = cli.main(["generate", "a cat", "--demo", "--models-dir", str(models_dir), "-o", str(tmp_path / "x.gif"),
                   *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and ".gif" in err and ".png" in err and not (tmp_path / "x.gif").exists()


def test_generate_says_when_it_falls_back_to_the_demo_model(tmp_path, capsys, models_dir):
    rc = cli.main(["generate", "a cat", "--models-dir", str(models_dir), "--seed", "1", "-o",
                   str(tmp_path / "x.png"), *FAST])
    err = capsys.readouterr().err
    assert rc == 0 and "demo model" in err and "noise" in err and "--ckpt" in err


def _small(*extra: str) -> list[str]:
    return ["--set", "5.width=64", "--set", "5.height=64", "--set", "3.steps=1", *extra, "--no-progress"]


def test_run_a_shipped_template_with_demo(tmp_path, capsys, models_dir):
    rc = cli.main(["run", str(ROOT / "workflows" / "sd15_txt2img.json"), "--demo", "--models-dir",
                   str(models_dir), "-o", str(tmp_path / "o"), *_small()])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "ckpt_name 'v1-5-pruned-emaonly-fp16.safetensors' -> " in err
    assert len(list((tmp_path / "o").glob("*.png"))) == 1


def test_run_with_ckpt_maps_every_loader(tmp_path, capsys, models_dir):
    ckpt = next((models_dir / "checkpoints").iterdir())
    rc = cli.main(["run", str(ROOT / "workflows" / "sd15_txt2img.json"), "--ckpt", ckpt.name, "--models-dir",
                   str(models_dir), "-o", str(tmp_path / "o"), *_small()])
    assert rc == 0, capsys.readouterr().err
    prompt = json.loads(Image.open(next((tmp_path / "o").glob("*.png"))).text["prompt"])
    assert prompt["4"]["inputs"]["ckpt_name"] == ckpt.name


def test_run_maps_a_missing_checkpoint_to_the_only_one_with_a_note(tmp_path, capsys, models_dir):
    rc = cli.main(["run", str(ROOT / "workflows" / "sd15_txt2img.json"), "--models-dir", str(models_dir),
                   "-o", str(tmp_path / "o"), *_small()])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "note: node 4 (CheckpointLoaderSimple)" in err and "demo model" in err


def test_serve_demo_makes_and_announces_the_demo_checkpoint(tmp_path, capsys):
    from comfykit.demo import DEMO_CHECKPOINT
    from comfykit.server.cli import main as serve_main

    code = serve_main(["--demo", "--quick-test-for-ci", "--cpu", "--models-dir", str(tmp_path / "m"),
                       "--output-directory", str(tmp_path / "o"), "--input-directory", str(tmp_path / "i"),
                       "--temp-directory", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and DEMO_CHECKPOINT in out and "noise" in out
    assert (tmp_path / "m" / "checkpoints" / DEMO_CHECKPOINT).is_file()


def _prompt_of(path: Path) -> dict:
    with Image.open(path) as im:
        return json.loads(im.text["prompt"])


@pytest.mark.parametrize("family,template_node", [("flux", "EmptySD3LatentImage"), ("sd3", "EmptySD3LatentImage")])
def test_generate_demo_family_uses_that_familys_workflow(tmp_path, capsys, family, template_node):
    out = tmp_path / f"{family}.png"
    rc = cli.main(["generate", "a red fox", "--demo", "--family", family, "--models-dir", str(tmp_path / "models"),
                   "-o", str(out), *FAST])
    assert rc == 0, capsys.readouterr().err
    prompt = _prompt_of(out)
    assert template_node in {n["class_type"] for n in prompt.values()}
    sampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")["inputs"]
    assert sampler["cfg"] == (1.0 if family == "flux" else 4.0)  # FLUX.1 runs at cfg 1, SD3.5 at 4


def test_generate_model_shortcut_downloads_and_picks_the_flux_schnell_workflow(tmp_path, capsys, monkeypatch):
    from comfykit import demo, hub

    fetched = []

    def fake_download(what, models_dir, **kwargs):  # what the hub would put there, made tiny
        fetched.append(what)
        if what == "flux-dev":
            names = demo.make_dit_files(models_dir, "flux-dev", fp8=True,
                                        names={"unet": "flux1-dev.safetensors",
                                               "t5xxl": "t5xxl_fp8_e4m3fn_scaled.safetensors"})
            return [Path(models_dir) / "diffusion_models" / names["unet"]]
        return demo.make_dit_checkpoint(Path(models_dir) / "checkpoints" / "flux1-schnell-fp8.safetensors", "flux")

    monkeypatch.setattr(hub, "download", fake_download)
    out = tmp_path / "fox.jpg"
    args = ["--models-dir", str(tmp_path / "models"), "--width", "64", "--height", "64", "--no-progress"]
    assert cli.main(["generate", "a red fox", "--model", "flux-schnell", "-o", str(out), *args]) == 0
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.size == (64, 64)
    assert cli.main(["generate", "a red fox", "--model", "flux-dev", "--steps", "2", "-o", str(tmp_path / "d.png"),
                     *args]) == 0
    prompt = _prompt_of(tmp_path / "d.png")
    assert {"UNETLoader", "DualCLIPLoader", "FluxGuidance"} <= {n["class_type"] for n in prompt.values()}
    assert fetched == ["flux-schnell", "flux-dev"]
    assert cli.main(["generate", "a fox", "--model", "nonsense", *args]) != 0
    assert "is not a shortcut" in capsys.readouterr().err


def test_memory_flags_reach_the_engine(monkeypatch):
    from comfykit.server.cli import engine_kwargs, parse_args

    kwargs = engine_kwargs(parse_args(["--lowvram", "--reserve-vram", "1.5"]))
    assert kwargs["vram"] == "low" and kwargs["reserve_vram"] == 1.5
    assert "vram" not in engine_kwargs(parse_args([]))
    seen = {}

    class FakeEngine:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)

    import comfykit.engine

    monkeypatch.setattr(comfykit.engine, "Engine", FakeEngine, raising=False)
    args = cli._parser().parse_args(["generate", "x", "--vram", "no", "--reserve-vram", "2"])
    cli._engine(args)
    assert seen["vram"] == "no" and seen["reserve_vram"] == 2.0


def test_precision_flags_reach_the_engine(monkeypatch):
    from comfykit.server.cli import engine_kwargs, parse_args

    # ComfyUI's own flags on serve; a narrower one wins over --force-fp16
    kwargs = engine_kwargs(parse_args(["--force-fp16", "--bf16-unet", "--fp32-vae"]))
    assert (kwargs["dtype"], kwargs["text_encoder_dtype"], kwargs["vae_dtype"]) == ("bf16", "fp16", "fp32")
    assert engine_kwargs(parse_args(["--force-fp32"]))["vae_dtype"] == "fp32"
    assert not {"dtype", "vae_dtype", "text_encoder_dtype"} & set(engine_kwargs(parse_args([])))
    with pytest.raises(SystemExit):
        parse_args(["--fp16-vae", "--bf16-vae"])  # one of each group, as in ComfyUI
    seen = {}

    class FakeEngine:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)

    import comfykit.engine

    monkeypatch.setattr(comfykit.engine, "Engine", FakeEngine, raising=False)
    cli._engine(cli._parser().parse_args(["generate", "x", "--dtype", "fp16", "--vae-dtype", "fp32"]))
    assert (seen["dtype"], seen["text_encoder_dtype"], seen["vae_dtype"]) == ("fp16", None, "fp32")
