"""Resource limits: each bound refuses with a 400 body naming node, input and limit; off when None."""

from __future__ import annotations

import pytest

from comfykit.errors import ValidationError
from comfykit.graph.limits import Limits, check_limits, estimate_tokens

LIMITS = Limits(max_pixels=4096 * 4096, max_batch=64, max_prompt_nodes=100, max_text_tokens=4096)


def _latent(width: int, height: int, batch: int = 1) -> dict:
    return {"5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                               "batch_size": batch}}}


def _refusal(prompt: dict, limits: Limits = LIMITS) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        check_limits(prompt, limits)
    return caught.value


def test_pixels_name_node_input_and_limit():
    exc = _refusal(_latent(16384, 16384))
    entry = exc.node_errors["5"]
    assert entry["class_type"] == "EmptyLatentImage"
    error = entry["errors"][0]
    assert error["extra_info"]["input_name"] == "width" and error["extra_info"]["limit"] == 4096 * 4096
    assert "--max-pixels" in str(exc) and "node 5 (EmptyLatentImage)" in str(exc)
    assert exc.to_dict()["error"]["type"] == "prompt_outputs_failed_validation"


def test_batch_and_repeat_amount():
    exc = _refusal(_latent(512, 512, 4096))
    assert exc.node_errors["5"]["errors"][0]["extra_info"]["input_name"] == "batch_size"
    repeat = {"9": {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["5", 0], "amount": 1000}}}
    assert "--max-batch" in str(_refusal(repeat))
    other = {"9": {"class_type": "SomethingElse", "inputs": {"amount": 1000}}}  # not a batch there
    check_limits(other, LIMITS)


def test_text_tokens():
    huge = {"6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat, " * 200_000, "clip": ["4", 1]}}}
    exc = _refusal(huge)
    error = exc.node_errors["6"]["errors"][0]
    assert error["extra_info"]["input_name"] == "text" and "--max-text-tokens" in str(exc)
    assert len(str(exc)) < 2000  # the message does not echo the megabyte of text
    one_word = {"6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a" * 100_000}}}
    _refusal(one_word)  # one long word is many BPE tokens


def test_prompt_nodes():
    prompt = {str(i): {"class_type": "PreviewImage", "inputs": {}} for i in range(101)}
    exc = _refusal(prompt)
    assert exc.error["type"] == "prompt_too_large" and "--max-prompt-nodes" in str(exc)


def test_within_limits_and_links_pass():
    check_limits(_latent(4096, 4096, 64), LIMITS)
    check_limits({"5": {"class_type": "EmptyLatentImage", "inputs": {"width": ["1", 0], "height": 99999}}},
                 LIMITS)  # a linked size is not known before running
    sdxl = {"6": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"width": 16384, "height": 16384}}}
    check_limits(sdxl, LIMITS)  # conditioning sizes allocate nothing


def test_no_limits_means_off():
    check_limits(_latent(16384, 16384, 4096), None)
    check_limits(_latent(16384, 16384, 4096), Limits())
    assert not Limits().active and Limits.server_defaults().active


def test_estimate_tokens():
    assert estimate_tokens("a photo of a cat") == 5
    assert estimate_tokens("masterpiece, best quality") == 6
    assert estimate_tokens("x" * 400) == 100


def test_scale_by_is_bounded_through_the_chain():
    prompt = {"5": {"class_type": "EmptyLatentImage", "inputs": {"width": 2048, "height": 2048, "batch_size": 1}},
              "3": {"class_type": "KSampler", "inputs": {"latent_image": ["5", 0], "model": ["4", 0]}},
              "10": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "scale_by": 1.5}},
              "11": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["10", 0], "scale_by": 2.0}}}
    exc = _refusal(prompt)
    assert list(exc.node_errors) == ["11"]  # 2048 * 1.5 = 3072 fits; * 2 = 6144 does not
    assert exc.node_errors["11"]["errors"][0]["extra_info"]["input_name"] == "scale_by"
    prompt["11"]["inputs"]["scale_by"] = 1.25
    check_limits(prompt, LIMITS)
    unknown = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
               "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "scale_by": 8.0}}}
    check_limits(unknown, LIMITS)  # a loaded image's size is not known before running


def test_scale_sizes_on_a_long_chain_and_a_cycle():
    prompt = {"0": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64}}}
    for i in range(1, 20_000):
        prompt[str(i)] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": [str(i - 1), 0], "scale_by": 1.0}}
    check_limits(prompt, Limits(max_pixels=4096 * 4096))
    cycle = {"1": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["2", 0], "scale_by": 2.0}},
             "2": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["1", 0], "scale_by": 2.0}}}
    check_limits(cycle, LIMITS)
