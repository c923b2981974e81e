"""Prompts for the pool: Workflow to API dict, per-job overrides, and the model names a job loads."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

#: Input names that name a model file; jobs sharing these values are routed to a worker that has them loaded.
MODEL_INPUTS = frozenset({
    "ckpt_name", "unet_name", "vae_name", "lora_name", "clip_name", "clip_name1", "clip_name2", "clip_name3",
    "control_net_name", "style_model_name", "upscale_model_name", "gligen_name", "hypernetwork_name",
    "model_name", "taesd_name",
})


def to_prompt(workflow: Any) -> dict[str, Any]:
    """The API prompt of a Workflow (checked here, before any worker gets it) or a copy of an API or UI dict."""
    from ..graph.prompt import to_api_prompt

    return to_api_prompt(workflow, validate=True, copy=True).prompt


def models_of(prompt: Mapping[str, Any]) -> frozenset[str]:
    """The model file names a prompt loads (checkpoints, LoRAs, VAEs...): the key used to route it."""
    names = set()
    for node in prompt.values():
        inputs = node.get("inputs", {}) if isinstance(node, Mapping) else {}
        for key, value in inputs.items():
            if key in MODEL_INPUTS and isinstance(value, str):
                names.add(value)
    return frozenset(names)


def _override_target(key: Any) -> tuple[str, str, bool]:
    """(node id, input name, trusted) of an override key: an InputRef, a (node, input) pair or "node.input"."""
    if hasattr(key, "node") and hasattr(key, "name"):
        node = key.node
        node_id = getattr(node, "id", node)
        return str(node_id), str(key.name), True
    if isinstance(key, tuple) and len(key) == 2:
        node, name = key
        return str(getattr(node, "id", node)), str(name), False
    if isinstance(key, str) and "." in key:
        node, name = key.split(".", 1)
        return node, name, False
    raise TypeError(f"override key {key!r} is not an input reference; use an InputRef such as sampler.seed, "
                    "a (node_id, input_name) tuple or a 'node_id.input_name' string")


def apply_overrides(prompt: Mapping[str, Any], overrides: Mapping[Any, Any] | None) -> dict[str, Any]:
    """A copy of ``prompt`` with each ``{input_ref: value}`` of ``overrides`` set."""
    out = copy.deepcopy(dict(prompt))
    for key, value in (overrides or {}).items():
        node_id, name, trusted = _override_target(key)
        if node_id not in out:
            raise ValueError(f"override {key!r}: node {node_id!r} is not in the workflow "
                             f"(its nodes are {sorted(out, key=str)})")
        inputs = out[node_id].setdefault("inputs", {})
        if not trusted and name not in inputs:
            raise ValueError(f"override {key!r}: node {node_id} ({out[node_id].get('class_type', '?')}) has no "
                             f"input {name!r}; its inputs are {sorted(inputs)}")
        inputs[name] = value
    return out
