"""ComfyUI's templates on a real CUDA device (skipped without one): the same tiny-model harness as
test_comfyui_templates.py, with the dtypes users get on a GPU (fp16 UNets and text encoders, bf16 DiTs and VAEs).

What only a GPU shows: a tensor made on the CPU meeting a CUDA one inside a forward pass or a sampler step
("Expected all tensors to be on the same device"), a CUDA tensor handed to numpy, and fp16 overflows (NaN or
black pictures). The partial-loading runs stream weights from pinned host memory, which the CPU tests cannot.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("comfyui_workflow_templates_json")

import numpy as np  # noqa: E402
import test_comfyui_templates as templates  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

try:  # the mask templates share the harness; that module skips itself without the newer templates package
    import test_mask_templates as mask_templates

    MASK_TEMPLATES = list(mask_templates.TEMPLATES)
except pytest.skip.Exception:
    MASK_TEMPLATES = []

#: templates without a model, whose pictures are solid masks and colours by design
NO_MODEL = {"basic_mask_operations_and_compositing"}
#: templates run again with partial loading: an SD1.5 checkpoint with a LoRA (patched weights streamed),
#: and the all-in-one FLUX.1 schnell fp8 checkpoint (fp8 layers streamed and upcast on the device, CLIP + T5)
PARTIAL = ["lora", "flux_schnell"]
#: a device budget (GB, 200 kB) below every tiny model's size, so vram="low" streams part of each
TINY_BUDGET_GB = 0.0002


def _pixels(result) -> list[np.ndarray]:
    assert result.status == "success", result.error
    assert result.images, "the run saved no image"
    return [np.asarray(im.convert("RGB"), dtype=np.int16) for im in result.images]


def _assert_a_picture(result) -> None:
    """Every image has more than one colour: an fp16 overflow decodes to NaN, saved as an all-black image."""
    for i, pixels in enumerate(_pixels(result)):
        assert pixels.std() > 0.5, f"image {i} is one colour {pixels.reshape(-1, 3)[0].tolist()}: NaN or overflow"


@pytest.mark.parametrize("name", list(templates.TEMPLATES) + MASK_TEMPLATES)
def test_template_runs_on_cuda(name, tmp_path):
    result, _ = templates.run_template(name, tmp_path, device="cuda")
    if name in NO_MODEL:
        _pixels(result)
    else:
        _assert_a_picture(result)


@pytest.mark.parametrize("vram", ["low", "no"])
@pytest.mark.parametrize("name", PARTIAL)
def test_partial_loading_on_cuda_matches_a_full_load(name, vram, tmp_path):
    full, _ = templates.run_template(name, tmp_path, device="cuda")
    budget = TINY_BUDGET_GB if vram == "low" else None
    streamed, manager = templates.run_template(name, tmp_path, device="cuda", vram=vram, vram_budget=budget)
    events = manager.events
    _assert_a_picture(streamed)
    assert any(kind == "partial" for kind, _ in events), f"vram={vram!r} streamed nothing: {events}"
    # the same weights and kernels, only copied in per layer: the pictures agree up to rounding
    for want, got in zip(_pixels(full), _pixels(streamed)):
        assert np.abs(want - got).mean() < 2.0
