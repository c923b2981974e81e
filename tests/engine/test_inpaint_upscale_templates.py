"""The inpainting, outpainting, ESRGAN hires-fix and ControlNet templates (workflows/) run end to end on tiny models."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from comfykit import demo, templates  # noqa: E402


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    import numpy as np
    from PIL import Image

    from comfykit.engine import Engine

    base = tmp_path_factory.mktemp("templates")
    models, inputs = base / "models", base / "input"
    demo.make_checkpoint(models / "checkpoints" / "inpaint.safetensors", arch="sd1-inpaint", seed=1)
    demo.ensure_demo_checkpoint(models)
    demo.make_upscale_model(models / "upscale_models" / "RealESRGAN_x4plus.safetensors", layout="new")
    demo.make_controlnet(models / "controlnet" / "control_v11p_sd15_openpose_fp16.safetensors", arch="sd1")
    inputs.mkdir()
    pixels = (np.random.default_rng(0).random((48, 64, 4)) * 255).astype("uint8")
    pixels[..., 3] = 255
    pixels[8:24, 24:48, 3] = 0  # transparent: LoadImage's mask is 1 there, the part to repaint
    Image.fromarray(pixels, "RGBA").save(inputs / "photo.png")
    eng = Engine(models, output_dir=base / "out", input_dir=inputs, temp_dir=base / "tmp", device="cpu",
                 previews="none")
    yield eng
    eng.shutdown()


@pytest.mark.parametrize("name,size", [("sd15_inpaint", (64, 48)), ("sd15_outpaint", (96, 48))])
def test_inpaint_and_outpaint_templates_run(engine, name, size):
    prompt = templates.fill(name, ckpt_name="inpaint.safetensors", image="photo.png", steps=2, seed=3)
    if name == "sd15_outpaint":
        prompt["12"]["inputs"].update(right=32, feathering=8)
    result = engine.run(prompt)
    assert result.status == "success" and result.image.size == size


def test_esrgan_hires_fix_template_runs(engine):
    prompt = templates.fill("esrgan_hires_fix", ckpt_name=demo.DEMO_CHECKPOINT, width=64, height=64, steps=2)
    prompt["11"]["inputs"]["steps"] = 2
    prompt["14"]["inputs"].update(width=128, height=128)  # 64 -> 256 (ESRGAN 4x) -> 128 for the second pass
    events = []
    result = engine.run(prompt, on_event=events.append)
    assert result.status == "success" and result.image.size == (128, 128)
    assert any(e.type == "executed" and e.data["node"] == "9" for e in events)
    assert any(e.type == "progress" and e.data["node"] == "13" for e in events)


def test_controlnet_template_runs_and_the_controlnet_changes_the_picture(engine):
    prompt = templates.fill("sd15_controlnet", ckpt_name=demo.DEMO_CHECKPOINT, image="photo.png", width=64,
                            height=64, steps=2, seed=3)
    controlled = engine.run(prompt)
    assert controlled.status == "success" and controlled.image.size == (64, 64)
    apply = next(k for k, n in prompt.items() if n["class_type"] == "ControlNetApplyAdvanced")
    prompt[apply]["inputs"]["strength"] = 0.0
    plain = engine.run(prompt)
    assert plain.status == "success" and plain.image.tobytes() != controlled.image.tobytes()
