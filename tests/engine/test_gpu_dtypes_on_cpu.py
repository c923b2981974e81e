"""ComfyUI's templates with a GPU's dtypes, on the CPU: the half-precision paths a T4 or an A100 takes.

CPU runs compute in float32, so a dtype mismatch or an fp16 overflow that only a GPU run would meet stays hidden
there. Here each template runs with the dtypes ``precision_for`` picks on an A100 (fp16 UNets and text encoders,
bf16 FLUX.1 and VAE) and on a T4 (fp16 everywhere, fp32 VAE), and its picture must match the float32 one.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import numpy as np  # noqa: E402
from test_comfyui_templates import run_template  # noqa: E402

#: the dtypes of two GPUs (comfykit.engine.models.precision's table), as Engine options
GPUS = {"a100": lambda flux: dict(dtype="bf16" if flux else "fp16", text_encoder_dtype="fp16", vae_dtype="bf16"),
        "t4": lambda flux: dict(dtype="fp16", text_encoder_dtype="fp16", vae_dtype="fp32")}


def _run(name: str, tmp_path, **dtypes) -> np.ndarray:
    from comfykit.engine.models.offload import model_modules
    from comfykit.engine.models.precision import parse_dtype

    result, manager = run_template(name, tmp_path, device="cpu", cache="none", **dtypes)
    assert result.status == "success", result.error
    stored = {p.dtype for m in manager.models() for module in model_modules(m) for p in module.parameters()}
    asked = {parse_dtype(dtypes.get(k, "fp32")) for k in ("dtype", "text_encoder_dtype", "vae_dtype")}
    assert asked <= stored, f"asked for {asked}, the loaded models hold {stored}"
    return np.asarray(result.images[-1], dtype=np.float32)


@pytest.mark.parametrize("gpu", list(GPUS))
@pytest.mark.parametrize("name", ["lora", "sdxl_simple_example", "flux_schnell", "sd3.5_simple_example",
                                  "controlnet_example", "sd3.5_large_canny_controlnet_example"])
def test_template_with_gpu_dtypes_matches_float32(name, gpu, tmp_path):
    want = _run(name, tmp_path)
    got = _run(name, tmp_path, **GPUS[gpu]("flux" in name))
    diff = np.abs(got - want)
    # measured: mean 0.0-0.9, 99th percentile 0-4 grey levels; an overflow gives black or NaN pictures instead
    assert np.isfinite(got).all() and got.std() > 5
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12, (diff.mean(), np.percentile(diff, 99))
