"""How a node is declared: ComfyUI's schema (inputs, outputs, category) and its implementation in one class.

This module and every node module import no torch at import time, so the graph layer can build ``/object_info``
from the same declarations the engine runs. A node's implementation imports torch (and the engine's model code)
inside its method.

>>> class Invert(Node):
...     '''Inverts images (1 - x).'''
...     DISPLAY, CATEGORY = "Invert Image", "image"
...     INPUTS = {"image": LINK("IMAGE", "Images to invert.")}
...     OUTPUTS = ("IMAGE",)
...     def run(self, image):
...         return (1.0 - image,)
>>> node_info(Invert)["input"]
{'required': {'image': ['IMAGE', {'tooltip': 'Images to invert.'}]}}
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

MAX_RESOLUTION = 16384
MAX_SEED = 0xFFFFFFFFFFFFFFFF

#: Key added to a file-list combo's options when no file list is known: any file name passes validation
#: (the backend checks that the file exists). ComfyUI's frontend ignores unknown option keys.
ANY_FILE = "any_file"


# -- input declarations: each returns ComfyUI's ``[type, options]`` pair --------------------------------------
def _opts(tip: str, extra: dict[str, Any], **known: Any) -> dict[str, Any]:
    opts = {k: v for k, v in known.items() if v is not None}
    opts.update(extra)
    if tip:
        opts["tooltip"] = tip
    return opts


def INT(default: int, min: int, max: int, step: int | None = None, tip: str = "", **extra: Any) -> list:  # noqa: A002,N802
    """An integer widget."""
    return ["INT", _opts(tip, extra, default=default, min=min, max=max, step=step)]


def FLOAT(default: float, min: float, max: float, step: float, tip: str = "", **extra: Any) -> list:  # noqa: A002,N802
    """A float widget."""
    return ["FLOAT", _opts(tip, extra, default=default, min=min, max=max, step=step)]


def STRING(default: str | None = None, tip: str = "", multiline: bool = False, **extra: Any) -> list:  # noqa: N802
    """A text widget; ``multiline`` prompts also get ComfyUI's ``dynamicPrompts``."""
    if multiline:
        extra = {"multiline": True, "dynamicPrompts": True, **extra}
    return ["STRING", _opts(tip, extra, default=default)]


def BOOLEAN(default: bool, tip: str = "", **extra: Any) -> list:  # noqa: N802
    """A toggle widget."""
    return ["BOOLEAN", _opts(tip, extra, default=default)]


def COMBO(choices: list[str] | tuple[str, ...], tip: str = "", default: str | None = None, **extra: Any) -> list:  # noqa: N802
    """A choice among fixed strings (the first is the default unless ``default`` says otherwise)."""
    opts = _opts(tip, extra, default=default)
    return [list(choices), opts] if opts else [list(choices)]


def LINK(type_: str, tip: str = "", **extra: Any) -> list:  # noqa: N802
    """An input fed by another node's output of ``type_``."""
    opts = _opts(tip, extra)
    return [type_, opts] if opts else [type_]


@dataclass(frozen=True)
class FILES:
    """A choice among the files of a model folder (or "input"), listed when the schema is built."""

    folder: str
    tip: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self, files: dict[str, list[str]] | None) -> list:
        opts: dict[str, Any] = {"tooltip": self.tip} if self.tip else {}
        opts.update({"folder": self.folder, **self.extra})
        if files is None:
            opts[ANY_FILE] = True
            return [[], opts]
        return [sorted(files.get(self.folder, [])), opts]


# -- the node base class ----------------------------------------------------------------------------------------
class Node:
    """One ComfyUI node type: its declaration (class attributes) and its implementation (``FUNCTION``).

    Declaration: ``INPUTS`` (required, in order), ``OPTIONAL``, ``HIDDEN`` (name -> "PROMPT" | "EXTRA_PNGINFO" |
    "UNIQUE_ID"), ``OUTPUTS`` (types), ``OUTPUT_NAMES`` (default: the types), ``OUTPUT_NODE``, ``DISPLAY``,
    ``CATEGORY`` (``DISPLAY`` None: no display name, as ComfyUI's newer nodes); the first paragraph of the docstring is the description. The executor calls
    ``getattr(node, FUNCTION)(**inputs)`` with exactly the declared inputs; while it runs, ``self.ctx`` is a
    :class:`comfykit.engine.executor.RunContext` and ``self.engine`` the running Engine.
    """

    INPUTS: ClassVar[dict[str, Any]] = {}
    OPTIONAL: ClassVar[dict[str, Any]] = {}
    HIDDEN: ClassVar[dict[str, str]] = {}
    OUTPUTS: ClassVar[tuple[str, ...]] = ()
    OUTPUT_NAMES: ClassVar[tuple[str, ...] | None] = None
    OUTPUT_NODE: ClassVar[bool] = False
    NOT_IDEMPOTENT: ClassVar[bool] = False
    DISPLAY: ClassVar[str | None] = None
    CATEGORY: ClassVar[str] = ""
    PYTHON_MODULE: ClassVar[str] = "nodes"
    FUNCTION: ClassVar[str] = "run"
    RETURN_TYPES: ClassVar[tuple[str, ...]] = ()  # ComfyUI's name for OUTPUTS, kept in step by __init_subclass__

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.RETURN_TYPES = tuple(cls.OUTPUTS)

    def __init__(self, engine: Any = None):
        self.engine = engine
        self.ctx: Any = None

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        """Report progress of this node (and stop here if the run was interrupted)."""
        if self.ctx is not None:
            self.ctx.progress(value, total, preview)

    def check_interrupt(self) -> None:
        """Stop here if the run was interrupted."""
        if self.ctx is not None:
            self.ctx.check_interrupt()

    def call_with(self, fn: Any, *models: Any) -> Any:
        """Run ``fn()`` with ``models`` on the engine's compute device."""
        return self.engine.call_with(fn, *models)


def description(cls: type[Node]) -> str:
    """The first paragraph of a node's docstring, on one line."""
    doc = inspect.getdoc(cls) if cls.__doc__ else ""
    return " ".join((doc or "").split("\n\n")[0].split())


def declared_inputs(cls: type[Node]) -> dict[str, str]:
    """Every input the implementation receives: name -> "required" | "optional" | "hidden"."""
    out = {name: "required" for name in cls.INPUTS}
    out.update({name: "optional" for name in cls.OPTIONAL})
    out.update({name: "hidden" for name in cls.HIDDEN})
    return out


def node_info(cls: type[Node], files: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The ``/object_info`` entry of one node; file-name combos list ``files`` (None: any name passes)."""

    def render(spec: Any) -> list:
        return spec.render(files) if isinstance(spec, FILES) else spec

    inputs: dict[str, Any] = {"required": {k: render(v) for k, v in cls.INPUTS.items()}}
    order: dict[str, list[str]] = {"required": list(cls.INPUTS)}
    if cls.OPTIONAL:
        inputs["optional"] = {k: render(v) for k, v in cls.OPTIONAL.items()}
        order["optional"] = list(cls.OPTIONAL)
    if cls.HIDDEN:
        inputs["hidden"] = dict(cls.HIDDEN)
        order["hidden"] = list(cls.HIDDEN)
    outputs = list(cls.OUTPUTS)
    return {"input": inputs, "input_order": order, "output": outputs, "output_is_list": [False] * len(outputs),
            "output_name": list(cls.OUTPUT_NAMES or outputs), "name": cls.__name__,
            "display_name": cls.DISPLAY,
            "description": description(cls), "python_module": cls.PYTHON_MODULE, "category": cls.CATEGORY,
            "output_node": cls.OUTPUT_NODE}
