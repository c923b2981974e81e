"""Resource limits on a prompt (pixels, batch, nodes, text): checked before it runs, so one prompt cannot take
the machine. Torch-free; the server applies :meth:`Limits.server_defaults`, an in-process Engine none unless set.

>>> check_limits({"1": {"class_type": "EmptyLatentImage",
...                     "inputs": {"width": 16384, "height": 16384, "batch_size": 1}}},
...              Limits(max_pixels=4096 * 4096))  # doctest: +ELLIPSIS
Traceback (most recent call last):
comfykit.errors.ValidationError: Prompt exceeds a resource limit...
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationError

#: Inputs giving a batch size; the Repeat*Batch nodes call it ``amount``.
_BATCH_INPUTS = {"batch_size": None, "amount": ("RepeatLatentBatch", "RepeatImageBatch")}

#: Pairs of inputs that set an image size in pixels (latent nodes also take pixels and divide by 8 themselves).
_SIZE_PAIRS = (("width", "height"), ("target_width", "target_height"))

_PIECES = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Limits:
    """Upper bounds for one prompt; None switches a bound off.

    ``max_pixels``: width x height of any image or latent a node creates or scales to; ``max_batch``: a
    ``batch_size``; ``max_prompt_nodes``: nodes in the prompt; ``max_text_tokens``: estimated CLIP tokens of any
    text input (the count of words and punctuation marks, or a quarter of the characters if that is more).
    """

    max_pixels: int | None = None
    max_batch: int | None = None
    max_prompt_nodes: int | None = None
    max_text_tokens: int | None = None

    @classmethod
    def server_defaults(cls) -> Limits:
        """Bounds that fit a 24 GB GPU: 4096x4096 pixels, batches of 64, 10,000 nodes, 4096 text tokens."""
        return cls(max_pixels=4096 * 4096, max_batch=64, max_prompt_nodes=10_000, max_text_tokens=4096)

    @property
    def active(self) -> bool:
        """True when at least one bound is set."""
        return any(v is not None for v in (self.max_pixels, self.max_batch, self.max_prompt_nodes,
                                           self.max_text_tokens))


def estimate_tokens(text: str) -> int:
    """A cheap estimate of CLIP tokens in ``text``: words and punctuation, or a quarter of the characters."""
    return max(len(_PIECES.findall(text)), len(text) // 4)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # a link, or a value validation will refuse anyway
    return value


def _error(name: str, message: str, value: Any, limit: int, flag: str) -> dict[str, Any]:
    return {"type": "value_bigger_than_max", "message": message, "details": f"{name}: limit {limit} ({flag})",
            "extra_info": {"input_name": name, "received_value": value, "limit": limit, "limit_flag": flag}}


def _node_errors(node: dict[str, Any], limits: Limits) -> list[dict[str, Any]]:
    inputs = node.get("inputs")
    if not isinstance(inputs, dict):
        return []
    errors = []
    # SDXL text encoders take sizes as conditioning only; they allocate nothing of that size.
    if limits.max_pixels is not None and "TextEncode" not in str(node.get("class_type")):
        for w_name, h_name in _SIZE_PAIRS:
            width, height = _number(inputs.get(w_name)), _number(inputs.get(h_name))
            if width is not None and height is not None and width * height > limits.max_pixels:
                errors.append(_error(w_name, f"{w_name} x {h_name} = {int(width)} x {int(height)} = "
                                     f"{int(width * height)} pixels, more than the server allows",
                                     width, limits.max_pixels, "--max-pixels"))
    if limits.max_batch is not None:
        for name, classes in _BATCH_INPUTS.items():
            batch = _number(inputs.get(name))
            if batch is not None and batch > limits.max_batch and (classes is None
                                                                   or node.get("class_type") in classes):
                errors.append(_error(name, f"{name} {batch} is more than the server allows", batch,
                                     limits.max_batch, "--max-batch"))
    if limits.max_text_tokens is not None:
        for name, value in inputs.items():
            if isinstance(value, str) and len(value) > limits.max_text_tokens:  # shorter texts cannot exceed it
                tokens = estimate_tokens(value)
                if tokens > limits.max_text_tokens:
                    errors.append(_error(name, f"{name} is about {tokens} tokens long, more than the server "
                                         "allows", f"<{len(value)} characters>", limits.max_text_tokens,
                                         "--max-text-tokens"))
    return errors


#: Inputs that carry the image or latent a node works on (its output has that size unless the node sets one).
_CARRIERS = ("samples", "latent_image", "image", "pixels", "images", "latent")


def _linked(value: Any) -> str | None:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        return value[0]
    return None


def _scaled_sizes(prompt: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Pixel sizes known before running: set by width/height, carried through, multiplied by ``scale_by``.

    One pass in dependency order (iterative, so long chains are fine); unknown sizes (a loaded image) stay out.
    """
    sizes: dict[str, tuple[float, float]] = {}
    done: set[str] = set()
    expanded: set[str] = set()  # waiting for their carrier; meeting one again means a cycle
    for root in prompt:
        stack = [root]
        while stack:
            node_id = stack[-1]
            if node_id in done:
                stack.pop()
                continue
            node = prompt.get(node_id)
            inputs = node.get("inputs") if isinstance(node, dict) else None
            if not isinstance(inputs, dict):
                done.add(node_id)
                stack.pop()
                continue
            carrier = next((_linked(inputs[n]) for n in _CARRIERS if _linked(inputs.get(n)) in prompt), None)
            if carrier is not None and carrier not in done and carrier not in expanded:
                expanded.add(node_id)
                stack.append(carrier)
                continue
            done.add(node_id)
            stack.pop()
            width, height = _number(inputs.get("width")), _number(inputs.get("height"))
            if width is not None and height is not None and "TextEncode" not in str(node.get("class_type")):
                sizes[node_id] = (width, height)
            elif carrier in sizes:
                scale = _number(inputs.get("scale_by"))
                w, h = sizes[carrier]
                sizes[node_id] = (w * scale, h * scale) if scale is not None else (w, h)
    return sizes


def check_limits(prompt: dict[str, Any], limits: Limits | None) -> None:
    """Raise ValidationError (ComfyUI's 400 body, naming node, input and limit) if ``prompt`` exceeds ``limits``.

    Runs in time linear in the prompt's size and needs no schema, so it can run before validation.
    """
    if limits is None or not isinstance(prompt, dict):
        return
    if limits.max_prompt_nodes is not None and len(prompt) > limits.max_prompt_nodes:
        message = (f"Prompt has {len(prompt)} nodes, more than the server allows ({limits.max_prompt_nodes}, "
                   "--max-prompt-nodes)")
        error = {"type": "prompt_too_large", "message": message, "details": "", "extra_info": {
            "limit": limits.max_prompt_nodes, "limit_flag": "--max-prompt-nodes"}}
        raise ValidationError(message + "; split the work into smaller prompts", error, {})
    node_errors: dict[str, Any] = {}
    sizes = _scaled_sizes(prompt) if limits.max_pixels is not None else {}
    for node_id, node in prompt.items():
        errors = _node_errors(node, limits) if isinstance(node, dict) else []
        scale = _number(node.get("inputs", {}).get("scale_by")) if isinstance(node, dict) and isinstance(
            node.get("inputs"), dict) else None
        if scale is not None and node_id in sizes and limits.max_pixels is not None:
            width, height = sizes[node_id]
            if width * height > limits.max_pixels:
                errors.append(_error("scale_by", f"scale_by {scale} makes {int(width)} x {int(height)} = "
                                     f"{int(width * height)} pixels, more than the server allows", scale,
                                     limits.max_pixels, "--max-pixels"))
        if errors:
            node_errors[str(node_id)] = {"errors": errors, "dependent_outputs": [],
                                         "class_type": node.get("class_type")}
    if node_errors:
        lines = [f"  node {nid} ({entry['class_type']}) input '{err['extra_info']['input_name']}': "
                 f"{err['message']} (limit {err['extra_info']['limit']}, {err['extra_info']['limit_flag']})"
                 for nid, entry in node_errors.items() for err in entry["errors"]]
        error = {"type": "prompt_outputs_failed_validation", "message": "Prompt exceeds a resource limit",
                 "details": "\n".join(line.strip() for line in lines), "extra_info": {}}
        raise ValidationError("Prompt exceeds a resource limit\n" + "\n".join(lines), error, node_errors)
