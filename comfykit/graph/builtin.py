"""Schemas of the nodes comfykit's embedded engine implements, in ComfyUI's ``/object_info`` format (torch-free).

Input names, types, defaults, ranges, options, output types and names, display names and categories equal
ComfyUI 0.3.64's; the descriptions and tooltips are our own.

>>> from comfykit.graph import builtin
>>> builtin.object_info(files={"checkpoints": ["tiny.safetensors"]})["CheckpointLoaderSimple"]["input"]
{'required': {'ckpt_name': [['tiny.safetensors'], {'tooltip': 'Checkpoint file to load.', 'folder': 'checkpoints'}]}}
"""

from __future__ import annotations

from typing import Any

# ComfyUI's relative order; the engine's sampling part may append names it implements.
SAMPLER_NAMES = ["euler", "euler_ancestral", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms",
                 "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
                 "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
                 "ipndm", "ddim", "uni_pc", "uni_pc_bh2"]
SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal"]
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
IMAGE_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
MAX_RESOLUTION = 16384
MAX_SEED = 0xFFFFFFFFFFFFFFFF

#: Key added to a file-list combo's options when no file list is known: any file name passes validation
#: (the backend checks that the file exists). ComfyUI's frontend ignores unknown option keys.
ANY_FILE = "any_file"


def _int(default: int, lo: int, hi: int, step: int | None = None, tip: str = "", **extra: Any) -> list:
    opts: dict[str, Any] = {"default": default, "min": lo, "max": hi}
    if step is not None:
        opts["step"] = step
    opts.update(extra)
    if tip:
        opts["tooltip"] = tip
    return ["INT", opts]


def _float(default: float, lo: float, hi: float, step: float, tip: str = "", **extra: Any) -> list:
    opts: dict[str, Any] = {"default": default, "min": lo, "max": hi, "step": step}
    opts.update(extra)
    if tip:
        opts["tooltip"] = tip
    return ["FLOAT", opts]


def _link(type_: str, tip: str) -> list:
    return [type_, {"tooltip": tip}]


def _node(name: str, display: str, category: str, required: dict[str, list], outputs: list[str],
          description: str, output_node: bool = False, hidden: dict[str, str] | None = None) -> dict:
    inputs: dict[str, Any] = {"required": required}
    order: dict[str, list[str]] = {"required": list(required)}
    if hidden:
        inputs["hidden"] = dict(hidden)
        order["hidden"] = list(hidden)
    return {"input": inputs, "input_order": order, "output": list(outputs),
            "output_is_list": [False] * len(outputs), "output_name": list(outputs), "name": name,
            "display_name": display, "description": description, "python_module": "nodes",
            "category": category, "output_node": output_node}


def _files(files: dict[str, list[str]] | None, folder: str, tip: str, **extra: Any) -> list:
    opts: dict[str, Any] = {"tooltip": tip, "folder": folder, **extra}
    if files is None:
        opts[ANY_FILE] = True
        return [[], opts]
    return [sorted(files.get(folder, [])), opts]


_SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def object_info(files: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """The ``/object_info`` dict of every built-in node; file-name combos list ``files`` (None: any name passes)."""
    samplers = list(SAMPLER_NAMES)
    schedulers = list(SCHEDULER_NAMES)
    ksampler_common = {
        "steps": _int(20, 1, 10000, tip="Number of denoising steps."),
        "cfg": _float(8.0, 0.0, 100.0, 0.1, "Classifier-free guidance scale.", round=0.01),
        "sampler_name": [samplers, {"tooltip": "Sampling algorithm."}],
        "scheduler": [schedulers, {"tooltip": "How noise levels are spaced over the steps."}],
        "positive": _link("CONDITIONING", "What the image should show."),
        "negative": _link("CONDITIONING", "What the image should avoid."),
        "latent_image": _link("LATENT", "Latent to denoise."),
    }
    nodes = [
        _node("CheckpointLoaderSimple", "Load Checkpoint", "loaders",
              {"ckpt_name": _files(files, "checkpoints", "Checkpoint file to load.")},
              ["MODEL", "CLIP", "VAE"], "Loads a checkpoint: diffusion model, text encoder and VAE."),
        _node("VAELoader", "Load VAE", "loaders", {"vae_name": _files(files, "vae", "VAE file to load.")},
              ["VAE"], "Loads a standalone VAE."),
        _node("LoraLoader", "Load LoRA", "loaders",
              {"model": _link("MODEL", "Diffusion model to patch."),
               "clip": _link("CLIP", "Text encoder to patch."),
               "lora_name": _files(files, "loras", "LoRA file to apply."),
               "strength_model": _float(1.0, -100.0, 100.0, 0.01, "LoRA strength on the diffusion model."),
               "strength_clip": _float(1.0, -100.0, 100.0, 0.01, "LoRA strength on the text encoder.")},
              ["MODEL", "CLIP"], "Applies a LoRA to the diffusion model and the text encoder."),
        _node("LoraLoaderModelOnly", "LoraLoaderModelOnly", "loaders",
              {"model": _link("MODEL", "Diffusion model to patch."),
               "lora_name": _files(files, "loras", "LoRA file to apply."),
               "strength_model": _float(1.0, -100.0, 100.0, 0.01, "LoRA strength.")},
              ["MODEL"], "Applies a LoRA to the diffusion model only."),
        _node("CLIPTextEncode", "CLIP Text Encode (Prompt)", "conditioning",
              {"text": ["STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "Prompt text."}],
               "clip": _link("CLIP", "Text encoder.")},
              ["CONDITIONING"], "Encodes a text prompt into conditioning."),
        _node("CLIPSetLastLayer", "CLIP Set Last Layer", "conditioning",
              {"clip": _link("CLIP", "Text encoder."),
               "stop_at_clip_layer": _int(-1, -24, -1, 1, "Last layer to use (-2 = 'clip skip')."),},
              ["CLIP"], "Stops the text encoder at an earlier layer."),
        _node("ConditioningCombine", "Conditioning (Combine)", "conditioning",
              {"conditioning_1": _link("CONDITIONING", "First conditioning."),
               "conditioning_2": _link("CONDITIONING", "Second conditioning.")},
              ["CONDITIONING"], "Averages the predictions of two conditionings while sampling."),
        _node("ConditioningSetArea", "Conditioning (Set Area)", "conditioning",
              {"conditioning": _link("CONDITIONING", "Conditioning to restrict."),
               "width": _int(64, 64, MAX_RESOLUTION, 8, "Area width in pixels."),
               "height": _int(64, 64, MAX_RESOLUTION, 8, "Area height in pixels."),
               "x": _int(0, 0, MAX_RESOLUTION, 8, "Area left edge in pixels."),
               "y": _int(0, 0, MAX_RESOLUTION, 8, "Area top edge in pixels."),
               "strength": _float(1.0, 0.0, 10.0, 0.01, "Weight of this area.")},
              ["CONDITIONING"], "Applies a conditioning to one rectangle of the image."),
        _node("EmptyLatentImage", "Empty Latent Image", "latent",
              {"width": _int(512, 16, MAX_RESOLUTION, 8, "Image width in pixels."),
               "height": _int(512, 16, MAX_RESOLUTION, 8, "Image height in pixels."),
               "batch_size": _int(1, 1, 4096, tip="Images per batch.")},
              ["LATENT"], "An all-zero latent batch to start text-to-image from."),
        _node("LatentUpscale", "Upscale Latent", "latent",
              {"samples": _link("LATENT", "Latent to resize."),
               "upscale_method": [list(UPSCALE_METHODS)],
               "width": _int(512, 0, MAX_RESOLUTION, 8, "Target width in pixels (0 keeps the aspect ratio)."),
               "height": _int(512, 0, MAX_RESOLUTION, 8, "Target height in pixels (0 keeps the aspect ratio)."),
               "crop": [["disabled", "center"]]},
              ["LATENT"], "Resizes a latent to a pixel size."),
        _node("LatentUpscaleBy", "Upscale Latent By", "latent",
              {"samples": _link("LATENT", "Latent to resize."),
               "upscale_method": [list(UPSCALE_METHODS)],
               "scale_by": _float(1.5, 0.01, 8.0, 0.01, "Scale factor.")},
              ["LATENT"], "Resizes a latent by a factor."),
        _node("KSampler", "KSampler", "sampling",
              {"model": _link("MODEL", "Diffusion model."),
               "seed": _int(0, 0, MAX_SEED, tip="Noise seed.", control_after_generate=True),
               **ksampler_common,
               "denoise": _float(1.0, 0.0, 1.0, 0.01, "How much of the latent to replace (1 = all).")},
              ["LATENT"], "Denoises a latent with a model, prompts, sampler and scheduler."),
        _node("KSamplerAdvanced", "KSampler (Advanced)", "sampling",
              {"model": _link("MODEL", "Diffusion model."),
               "add_noise": [["enable", "disable"]],
               "noise_seed": _int(0, 0, MAX_SEED, tip="Noise seed.", control_after_generate=True),
               **ksampler_common,
               "start_at_step": _int(0, 0, 10000, tip="First step to run."),
               "end_at_step": _int(10000, 0, 10000, tip="Step to stop at."),
               "return_with_leftover_noise": [["disable", "enable"]]},
              ["LATENT"], "KSampler with control over the step range and the added noise."),
        _node("VAEDecode", "VAE Decode", "latent",
              {"samples": _link("LATENT", "Latent to decode."), "vae": _link("VAE", "VAE to decode with.")},
              ["IMAGE"], "Decodes a latent into images."),
        _node("VAEEncode", "VAE Encode", "latent",
              {"pixels": _link("IMAGE", "Images to encode."), "vae": _link("VAE", "VAE to encode with.")},
              ["LATENT"], "Encodes images into a latent."),
        _node("LoadImage", "Load Image", "image",
              {"image": _files(files, "input", "Image file in the input folder.", image_upload=True)},
              ["IMAGE", "MASK"], "Loads an image from the input folder, with its alpha as a mask."),
        _node("SaveImage", "Save Image", "image",
              {"images": _link("IMAGE", "Images to save."),
               "filename_prefix": ["STRING", {"default": "ComfyUI", "tooltip": "File name prefix."}]},
              [], "Saves images as PNG files in the output folder.", output_node=True, hidden=_SAVE_HIDDEN),
        _node("PreviewImage", "Preview Image", "image", {"images": _link("IMAGE", "Images to show.")},
              [], "Shows images without keeping them.", output_node=True, hidden=_SAVE_HIDDEN),
        _node("ImageScale", "Upscale Image", "image/upscaling",
              {"image": _link("IMAGE", "Images to resize."),
               "upscale_method": [list(IMAGE_UPSCALE_METHODS)],
               "width": _int(512, 0, MAX_RESOLUTION, 1, "Target width (0 keeps the aspect ratio)."),
               "height": _int(512, 0, MAX_RESOLUTION, 1, "Target height (0 keeps the aspect ratio)."),
               "crop": [["disabled", "center"]]},
              ["IMAGE"], "Resizes images to a pixel size."),
    ]
    return {n["name"]: n for n in nodes}


BUILTIN_NODES: tuple[str, ...] = tuple(object_info())

