"""ComfyUI's templates under device budgets too small for their models: the same pictures as with room to spare.

The memory model on the CPU with a fake device size (``Engine(vram_budget=GB)``): with half the bytes of all the
template's model files, models are unloaded least recently used first and come back; with a budget below the
largest model, that model is streamed layer by layer. Either way the images must equal the unconstrained run's.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import numpy as np  # noqa: E402
from test_comfyui_templates import run_template  # noqa: E402

TEMPLATES = ["lora", "sdxl_simple_example", "flux_dev_full_text_to_image", "controlnet_example",
             "sd3.5_large_canny_controlnet_example", "flux_depth_lora_example"]


def _images(result) -> list[np.ndarray]:
    assert result.status == "success", result.error
    return [np.asarray(im, dtype=np.int16) for im in result.images]


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_under_a_small_budget_gives_the_same_pictures(name, tmp_path):
    want = _images(run_template(name, tmp_path, device="cpu")[0])
    sizes = [p.stat().st_size for p in (tmp_path / "models").rglob("*") if p.is_file()]
    for budget, expect in ((sum(sizes) / 2, ("offload", "drop", "partial")), (max(sizes) * 0.4, ("partial",))):
        result, manager = run_template(name, tmp_path, device="cpu", vram_budget=budget / 2**30)
        events = manager.events
        got = _images(result)
        assert {kind for kind, _ in events} & set(expect), f"budget {budget:.0f} B: nothing unloaded: {events}"
        assert len(got) == len(want) and all(np.abs(g - w).max() <= 1 for g, w in zip(got, want))
