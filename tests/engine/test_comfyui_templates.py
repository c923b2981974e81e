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

import comfykit as ck  # noqa: E402
from comfykit import demo  # noqa: E402

#: where the templates are: the newer JSON-only package, then the ComfyUI 0.3.64-era package (0.1.95), which
#: still has the SD1.5/SD2 inpainting and ESRGAN examples the newer one dropped
PACKAGES = ("comfyui_workflow_templates_json", "comfyui_workflow_templates")
#: templates whose newer version needs nodes the engine lacks: sd3.5_large_depth and flux_depth_lora_example now make
#: their depth maps with Lotus (SetFirstSigma, LotusConditioning), so their ComfyUI 0.3.64-era versions are the ones run
PINNED = {"sd3.5_large_depth": ("comfyui_workflow_templates",),
          "flux_depth_lora_example": ("comfyui_workflow_templates",)}

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
    "inpaint_example": "SD2 inpainting checkpoint (9 channels), LoadImage's alpha mask, VAEEncodeForInpaint",
    "inpaint_model_outpainting": "ImagePadForOutpaint's image and mask into VAEEncodeForInpaint",
    "esrgan_example": "UpscaleModelLoader + ImageUpscaleWithModel (RealESRGAN_x4plus) after text to image",
    "hiresfix_esrgan_workflow": "ESRGAN 4x, ImageScale, VAEEncode and a second KSampler at denoise 0.5",
    "controlnet_example": "an SD1.5 scribble ControlNet (lllyasviel's layout) with ControlNetApplyAdvanced",
    "depth_controlnet": "an SD1.5 depth ControlNet",
    "mixing_controlnets": "two ControlNets stacked on one conditioning",
    "2_pass_pose_worship": "a pose ControlNet in a two-pass hires fix",
    "depth_t2i_adapter": "an SD1.5 depth T2I-Adapter (TencentARC's layout) through ControlNetLoader",
    "sd3.5_large_canny_controlnet_example": "Stability's SD3.5 canny ControlNet, Canny, ControlNetApplySD3",
    "sd3.5_large_blur": "Stability's SD3.5 blur ControlNet",
    "sd3.5_large_depth": "Stability's SD3.5 depth ControlNet (the 0.1.95 template)",
    "lora": "one LoRA on an SD1.5 checkpoint (LoraLoader: model and CLIP)",
    "lora_multiple": "two LoRAs chained on an SD1.5 checkpoint",
    "flux_depth_lora_example": "BFL's FLUX.1 depth control LoRA (x_embedder widened to 128 channels) on a dev unet, "
                               "LoraLoaderModelOnly, InstructPixToPixConditioning",
    "area_composition": "ConditioningSetArea composition over a wide latent",
}


def _template(name: str) -> dict:
    """The template's JSON from the first installed package that has it (the test skips when none does)."""
    import importlib

    for package in PINNED.get(name, PACKAGES):
        try:
            file = resources.files(importlib.import_module(package)) / "templates" / f"{name}.json"
        except ImportError:
            continue
        if file.is_file():
            return json.loads(file.read_text())
    pytest.skip(f"template {name!r} is in none of the installed packages {', '.join(PACKAGES)} (the SD1.5/SD2 "
                "inpainting and ESRGAN examples are in comfyui-workflow-templates==0.1.95)")


def _family(name: str) -> str:
    low = name.lower()
    if "inpaint" in low:  # 512-inpainting-ema is SD2's; sd-v1-5-inpainting SD1's
        return "sd1-inpaint" if any(k in low for k in ("v1-5", "v1_5", "sd15", "1.5")) else "sd2-inpaint"
    if "flux" in low:
        wide = next((f"flux-{k}" for k in ("fill", "canny", "depth") if k in low), None)
        return wide or ("flux-dev" if any(k in low for k in ("dev", "krea", "kontext")) else "flux")
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
            if family.startswith("flux") or family == "sd3":
                demo.make_dit_checkpoint(path, family)
            else:
                demo.make_checkpoint(path, arch=family, seed=1)
        elif n["class_type"] == "VAELoader" and unet is None:  # an SD1.5 VAE beside a checkpoint
            demo.make_vae(models / "vae" / n["inputs"]["vae_name"])
        elif n["class_type"] == "ControlNetLoader":  # lllyasviel's SD1.5 ControlNets (.safetensors or .pth), ...
            name = n["inputs"]["control_net_name"]
            layout = "ldm-pth" if name.endswith(".pth") else "ldm"
            arch = _family(name).replace("-inpaint", "")
            if "t2i" in name.lower():  # TencentARC's adapters, the same original layout
                arch += "-t2i"
            elif arch == "sd3":  # Stability's SD3.5 canny/depth/blur files, the control type from the name
                arch, layout = "sd3.5-sai", "ldm"
            demo.make_controlnet(models / "controlnet" / name, arch=arch, layout=layout)
        elif n["class_type"] in ("LoraLoader", "LoraLoaderModelOnly"):
            name = n["inputs"]["lora_name"]
            if unet is not None:  # a LoRA on a FLUX.1 unet: BFL's Canny/Depth control LoRAs by their names
                control = any(k in name.lower() for k in ("depth", "canny"))
                demo.make_lora(models / "loras" / name, models / "diffusion_models" / unet["unet_name"],
                               style="bfl-control" if control else "bfl")
                continue
            ckpt = next(m["inputs"]["ckpt_name"] for m in nodes if m["class_type"] == "CheckpointLoaderSimple")
            path = models / "checkpoints" / ckpt
            if not path.exists():
                demo.make_checkpoint(path, arch=_family(ckpt), seed=1)
            demo.make_lora(models / "loras" / name, path)
        elif n["class_type"] == "UpscaleModelLoader":  # Real-ESRGAN's files use the new key layout
            name = n["inputs"]["model_name"]
            layout = "new" if "realesrgan" in name.lower() else "old"
            demo.make_upscale_model(models / "upscale_models" / name, layout=layout)
        elif n["class_type"] == "LoadImage":
            inputs.mkdir(parents=True, exist_ok=True)
            pixels = (np.random.default_rng(0).random((48, 80, 4)) * 255).astype("uint8")
            pixels[..., 3] = 255
            pixels[16:32, 24:56, 3] = 0  # a transparent hole: LoadImage's mask for the inpainting templates
            image = Image.fromarray(pixels, "RGBA")
            name = n["inputs"]["image"]
            (inputs / name).parent.mkdir(parents=True, exist_ok=True)
            (image.convert("RGB") if name.lower().endswith((".jpg", ".jpeg")) else image).save(inputs / name)


def _shrink(prompt: dict) -> None:
    """64x64 latents and at most 2 steps (a step range keeps its proportions), so each template runs in seconds."""
    for n in prompt.values():
        inputs, kind = n["inputs"], n["class_type"]
        if kind in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inputs.update(width=64, height=64, batch_size=1)
        elif kind == "ImageScaleToTotalPixels":
            inputs["megapixels"] = 0.01  # about 77x129 from the 48x80 input
        elif kind == "ImageScale" and inputs.get("width", 0) > 128:
            inputs.update(width=128, height=128)  # the ESRGAN hires fix's second pass
        elif kind == "LatentUpscale" and max(inputs.get("width", 0), inputs.get("height", 0)) > 128:
            # hires-fix second passes (1536², 1088x1920): the longer side 128, the aspect kept
            scale = 128 / max(inputs["width"], inputs["height"])
            inputs.update(width=max(8, round(inputs["width"] * scale / 8) * 8),
                          height=max(8, round(inputs["height"] * scale / 8) * 8))
        elif kind == "ImagePadForOutpaint":
            inputs.update({k: min(v, 16) for k, v in inputs.items() if k in ("left", "top", "right", "bottom")})
            inputs["feathering"] = min(inputs["feathering"], 8)
        steps = inputs.get("steps")
        if isinstance(steps, int) and steps > 2:
            inputs["steps"] = 2
            for key in ("start_at_step", "end_at_step"):
                if isinstance(inputs.get(key), int) and inputs[key] < steps:
                    inputs[key] = round(inputs[key] * 2 / steps)


def run_template(name: str, tmp_path, **engine_options):
    """Run the template `name` shrunk, on tiny model files written under `tmp_path`; returns (result, the engine's
    model manager, models still loaded). `engine_options` go to Engine (device, vram, vram_budget, ...)."""
    from comfykit.engine import Engine

    prompt = ck.Workflow.load(_template(name)).to_api(validate=False)
    models, inputs = tmp_path / "models", tmp_path / "input"
    if not models.exists():  # a second run in the same folder reuses the files
        _write_models(prompt, models, inputs)
    _shrink(prompt)
    engine = Engine(models, output_dir=tmp_path / "out", input_dir=inputs, temp_dir=tmp_path / "tmp",
                    **{"previews": "none", **engine_options})
    try:
        result = engine.run(prompt)
    finally:
        engine.shutdown()
    return result, engine.models


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "flux_kontext_dev_basic" else n
                                  for n in TEMPLATES])  # Kontext scales its reference to ~1 MP: ~40 s here
def test_template_runs_end_to_end(name, tmp_path):
    result, _ = run_template(name, tmp_path, device="cpu")
    assert result.status == "success", result.error
    assert result.images and all(im.size[0] >= 64 for im in result.images)
