"""ComfyUI's templates that the mask, image and DifferentialDiffusion nodes complete run end to end on tiny models
(the machinery is test_comfyui_templates.py's)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("comfyui_workflow_templates_json")

import test_comfyui_templates as templates  # noqa: E402

TEMPLATES = {
    "basic_mask_operations_and_compositing": "EmptyImage, SolidMask, ImageToMask, ThresholdMask, FeatherMask, "
                                             "InvertMask, MaskComposite, MaskToImage, ImageCompositeMasked, "
                                             "MaskPreview",
    "flux_canny_model_example": "Canny as the hint of a FLUX.1 Canny model",
    "flux_fill_inpaint_example": "DifferentialDiffusion on FLUX.1 Fill inpainting",
    "flux_fill_outpaint_example": "ImagePadForOutpaint into FLUX.1 Fill",
    "image_flux.1_fill_dev_OneReward": "a FLUX.1 Fill fine-tune (OneReward) with a LoRA",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_mask_template_runs_end_to_end(name, tmp_path):
    templates.test_template_runs_end_to_end(name, tmp_path)
