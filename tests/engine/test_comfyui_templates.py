"""ComfyUI's own template workflows (the comfyui-workflow-templates package) run end to end on tiny models.

Each template is converted from its UI format, its model files are written as tiny random-weight files of the
layouts its loaders expect (an all-in-one FLUX.1 checkpoint, BFL's split files, an SD3.5 single file, ...), the
image size and step count are shrunk, and the engine runs it.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest

pytest.importorskip("torch")
templates_pkg = pytest.importorskip("comfyui_workflow_templates_json")

import comfykit as ck  # noqa: E402
from comfykit import demo  # noqa: E402

#: template -> what it exercises
TEMPLATES = {
    "flux_schnell": "all-in-one FLUX.1 schnell fp8 checkpoint, CheckpointLoaderSimple",
    "flux_schnell_full_text_to_image": "UNETLoader + DualCLIPLoader + VAELoader, CLIPTextEncodeFlux",
    "flux_dev_checkpoint_example": "FLUX.1 dev split files inside a subgraph",
    "flux_dev_full_text_to_image": "FLUX.1 dev split files, FluxGuidance",
    "flux1_krea_dev": "FLUX.1 Krea dev (a plain dev transformer)",
    "flux_kontext_dev_basic": "FLUX.1 Kontext: LoadImage, ImageStitch, FluxKontextImageScale, ReferenceLatent",
    "sd3.5_simple_example": "SD3.5 single-file checkpoint",
    "sdxl_simple_example": "SDXL base + refiner with KSamplerAdvanced",
    "image_sdxl_simple": "SDXL base + refiner (the newer template of the same graph)",
    "sdxl_refiner_prompt_example": "SDXL refiner (OpenCLIP-G only)",
    "sdxlturbo_example": "SDXL turbo with SamplerCustom",
}


def _template(name: str) -> dict:
    return json.loads((resources.files(templates_pkg) / "templates" / f"{name}.json").read_text())


def _family(name: str) -> str:
    low = name.lower()
    if "flux" in low:
        return "flux-dev" if any(k in low for k in ("dev", "krea", "kontext")) else "flux"
    if "sd3" in low:
        return "sd3"
    if "refiner" in low:
        return "sdxl-refiner"
    return "sdxl" if "xl" in low else "sd1"


def _write_models(prompt: dict, models, inputs) -> None:
    """Tiny files under the names the template's loaders ask for, in the layouts those loaders read."""
    import numpy as np
    from PIL import Image

    nodes = list(prompt.values())
    unet = next((n["inputs"] for n in nodes if n["class_type"] == "UNETLoader"), None)
    if unet is not None:
        family = _family(unet["unet_name"])
        clips = [v for n in nodes if n["class_type"] in ("DualCLIPLoader", "CLIPLoader", "TripleCLIPLoader")
                 for k, v in n["inputs"].items() if k.startswith("clip_name")]
        names = {"unet": unet["unet_name"]}
        for clip in clips:
            names["t5xxl" if "t5" in clip.lower() else "clip_g" if "clip_g" in clip.lower() else "clip_l"] = clip
        vae = next((n["inputs"]["vae_name"] for n in nodes if n["class_type"] == "VAELoader"), None)
        if vae:
            names["vae"] = vae
        demo.make_dit_files(models, family, names=names)
    for n in nodes:
        if n["class_type"] == "CheckpointLoaderSimple":
            name = n["inputs"]["ckpt_name"]
            family = _family(name)
            path = models / "checkpoints" / name
            if family in ("flux", "flux-dev", "sd3"):
                demo.make_dit_checkpoint(path, family)
            else:
                demo.make_checkpoint(path, arch=family, seed=1)
        elif n["class_type"] == "LoadImage":
            inputs.mkdir(parents=True, exist_ok=True)
            pixels = (np.random.default_rng(0).random((48, 80, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(inputs / n["inputs"]["image"])


def _shrink(prompt: dict) -> None:
    """64x64 latents and at most 2 steps (a step range keeps its proportions), so each template runs in seconds."""
    for n in prompt.values():
        inputs, kind = n["inputs"], n["class_type"]
        if kind in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inputs.update(width=64, height=64, batch_size=1)
        steps = inputs.get("steps")
        if isinstance(steps, int) and steps > 2:
            inputs["steps"] = 2
            for key in ("start_at_step", "end_at_step"):
                if isinstance(inputs.get(key), int) and inputs[key] < steps:
                    inputs[key] = round(inputs[key] * 2 / steps)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "flux_kontext_dev_basic" else n
                                  for n in TEMPLATES])  # Kontext scales its reference to ~1 MP: ~40 s here
def test_template_runs_end_to_end(name, tmp_path):
    from comfykit.engine import Engine

    prompt = ck.Workflow.load(_template(name)).to_api(validate=False)
    models, inputs = tmp_path / "models", tmp_path / "input"
    _write_models(prompt, models, inputs)
    _shrink(prompt)
    engine = Engine(models, output_dir=tmp_path / "out", input_dir=inputs, temp_dir=tmp_path / "tmp",
                    device="cpu", previews="none")
    try:
        result = engine.run(prompt)
    finally:
        engine.shutdown()
    assert result.status == "success", result.error
    assert result.images and all(im.size[0] >= 64 for im in result.images)
