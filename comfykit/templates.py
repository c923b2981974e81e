"""Ready-made workflows (``workflows/*.json``) and ``fill()`` to set their prompt, seed, size and model.

>>> from comfykit import templates
>>> prompt = templates.fill("sd15_txt2img", prompt="a red fox", seed=1, steps=4, width=256, height=256)
>>> prompt["6"]["inputs"]["text"], prompt["3"]["inputs"]["steps"], prompt["5"]["inputs"]["width"]
('a red fox', 4, 256)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .graph.nodes import Node, Output
from .graph.workflow import Workflow

_SAMPLERS = ("KSampler", "KSamplerAdvanced")


def folder() -> Path:
    """The templates folder: ``workflows/`` beside the package (a checkout) or a copy inside it."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "workflows", here / "workflows"):
        if (candidate / "index.json").is_file():
            return candidate
    raise FileNotFoundError(f"no workflows/ folder next to {here}; reinstall comfykit from a full checkout")


def descriptions() -> dict[str, str]:
    """Template name -> one-line description."""
    return json.loads((folder() / "index.json").read_text())


def names() -> list[str]:
    """The template names, e.g. ``sd15_txt2img``."""
    return sorted(p.stem for p in folder().glob("*.json") if p.stem != "index")


def path(name: str) -> Path:
    """The JSON file of a template."""
    file = folder() / f"{name}.json"
    if not file.is_file():
        import difflib

        close = difflib.get_close_matches(name, names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"no template {name!r}{hint} (templates: {', '.join(names())})")
    return file


def load(name: str, schema: Any = None) -> Workflow:
    """An editable Workflow of a template (API or UI format)."""
    return Workflow.load(path(name), schema)


def _samplers(wf: Workflow) -> list[Node]:
    """Samplers in data-flow order: the first one is the one whose latent does not come from another sampler."""
    samplers = [n for n in wf if n.class_type in _SAMPLERS]

    def depth(node: Node) -> int:
        count, seen = 0, set()
        stack = [node]
        while stack:
            current = stack.pop()
            for value in current._inputs.values():
                if isinstance(value, Output) and value.node.id not in seen:
                    seen.add(value.node.id)
                    count += value.node.class_type in _SAMPLERS
                    stack.append(value.node)
        return count

    return sorted(samplers, key=depth)


def _text_node(sampler: Node, name: str) -> Node | None:
    """The CLIPTextEncode behind a sampler input, through edits such as FluxGuidance (not through a zero-out)."""
    value = sampler._inputs.get(name)
    for _ in range(8):
        if not isinstance(value, Output) or value.node.class_type == "ConditioningZeroOut":
            return None
        if value.node.class_type == "CLIPTextEncode":
            return value.node
        value = value.node._inputs.get("conditioning")
    return None


def fill(name: str | Workflow, prompt: str | None = None, negative: str | None = None, seed: int | None = None,
         steps: int | None = None, cfg: float | None = None, width: int | None = None, height: int | None = None,
         ckpt_name: str | None = None, sampler_name: str | None = None, scheduler: str | None = None,
         denoise: float | None = None, batch_size: int | None = None, filename_prefix: str | None = None,
         image: str | None = None, lora_name: str | None = None, schema: Any = None) -> dict:
    """The API prompt of a template with the obvious inputs set (each checked like a DSL edit).

    ``prompt``/``negative`` go to the CLIPTextEncode nodes feeding the first sampler; ``steps``, ``sampler_name``,
    ``scheduler`` and ``denoise`` to the first sampler; ``seed`` and ``cfg`` to every sampler; ``width``,
    ``height``, ``batch_size`` to every EmptyLatentImage / EmptySD3LatentImage; ``ckpt_name``, ``lora_name``, ``image`` and
    ``filename_prefix`` to every loader, LoadImage and SaveImage.
    """
    wf = name if isinstance(name, Workflow) else load(name, schema)
    samplers = _samplers(wf)
    if samplers:
        first = samplers[0]
        for text, where in ((prompt, "positive"), (negative, "negative")):
            node = _text_node(first, where)
            if text is not None:
                if node is None:
                    raise ValueError(f"template {name!r} has no CLIPTextEncode feeding the sampler's {where} input")
                node.text = text
        _set(first, steps=steps, sampler_name=sampler_name, scheduler=scheduler, denoise=denoise)
        for sampler in samplers:
            _set(sampler, cfg=cfg, **{"noise_seed" if sampler.class_type == "KSamplerAdvanced" else "seed": seed})
    elif any(v is not None for v in (prompt, negative, steps, seed, cfg)):
        raise ValueError(f"template {name!r} has no KSampler to set prompt/seed/steps/cfg on")
    for node in wf:
        if node.class_type in ("EmptyLatentImage", "EmptySD3LatentImage"):
            _set(node, width=width, height=height, batch_size=batch_size)
        elif node.class_type == "CheckpointLoaderSimple":
            _set(node, ckpt_name=ckpt_name)
        elif node.class_type in ("LoraLoader", "LoraLoaderModelOnly"):
            _set(node, lora_name=lora_name)
        elif node.class_type == "LoadImage":
            _set(node, image=image)
        elif node.class_type == "SaveImage":
            _set(node, filename_prefix=filename_prefix)
    return wf.to_api()


def _set(node: Node, **values: Any) -> None:
    for key, value in values.items():
        if value is not None:
            setattr(node, key, value)
