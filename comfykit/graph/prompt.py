"""What every backend accepts as a prompt, turned into ComfyUI's API format in one place.

A backend's ``run``/``submit`` takes a :class:`~comfykit.graph.Workflow`, an API prompt dict, a ``POST /prompt``
body or the UI format the ComfyUI page saves; :func:`to_api_prompt` makes the API dict of any of them.

>>> to_api_prompt({"1": {"class_type": "EmptyLatentImage", "inputs": {}}}).prompt["1"]["class_type"]
'EmptyLatentImage'
"""

from __future__ import annotations

import copy as _copy
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..errors import ValidationError

log = logging.getLogger(__name__)


class ApiPrompt(NamedTuple):
    """An API prompt ``{node_id: {"class_type", "inputs"}}`` and, when known, the UI workflow it came from."""

    prompt: dict[str, Any]
    ui: dict[str, Any] | None = None


def is_ui_format(data: Any) -> bool:
    """True for the editor's save format (``{"nodes": [...], "links": [...], ...}``), not an API prompt."""
    return isinstance(data, Mapping) and isinstance(data.get("nodes"), list) and "links" in data


def to_api_prompt(workflow: Any, schema: Any = None, *, validate: bool = False, ui: bool = False,
                  copy: bool = False) -> ApiPrompt:
    """The API prompt of a Workflow, an API dict, a ``POST /prompt`` body or a UI-format dict.

    ``schema`` (anything :meth:`Schema.load` takes) maps a UI workflow's widget values to inputs. ``validate``
    runs a Workflow's own checks (a backend that validates against its live schema leaves it off, so a prompt is
    validated once); an API dict is only checked for its shape here, its backend validates it. ``ui`` also exports a Workflow's UI graph (for PNG metadata); a UI dict is always given
    back as it came. ``copy`` deep-copies an API dict, for callers that queue it while the user may edit it.
    """
    from .workflow import Workflow

    if isinstance(workflow, Workflow):
        return ApiPrompt(workflow.to_api(validate=validate), _ui_of(workflow) if ui else None)
    if hasattr(workflow, "to_api"):  # a Workflow-like object of the user's
        return ApiPrompt(workflow.to_api(), _ui_of(workflow) if ui and hasattr(workflow, "to_ui") else None)
    if not isinstance(workflow, Mapping):
        raise TypeError(f"expected a ck.Workflow or an API prompt dict (or a UI workflow dict), not "
                        f"{type(workflow).__name__}; build one with ck.Workflow() or load a JSON file with "
                        "ck.Workflow.load(path)")
    if is_ui_format(workflow):
        ui_dict = workflow if isinstance(workflow, dict) else dict(workflow)
        return ApiPrompt(Workflow.from_ui(ui_dict, schema).to_api(validate=validate), ui_dict)
    prompt = workflow
    if isinstance(prompt.get("prompt"), Mapping) and "class_type" not in prompt:
        prompt = prompt["prompt"]  # the POST /prompt body itself
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping) or "class_type" not in node:
            raise ValidationError(f"not an API prompt: node {node_id!r} has no class_type; expected "
                                  "{node_id: {'class_type': ..., 'inputs': {...}}} or a ck.Workflow")
    return ApiPrompt(_copy.deepcopy(dict(prompt)) if copy else dict(prompt), None)


def _ui_of(workflow: Any) -> dict[str, Any] | None:
    try:
        return workflow.to_ui()
    except Exception:  # noqa: BLE001 - the UI export is a nicety for PNG metadata, never a reason to fail a run
        log.debug("to_ui() failed; running without extra_pnginfo.workflow", exc_info=True)
        return None
