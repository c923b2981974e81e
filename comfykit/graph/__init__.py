"""The graph layer: node schemas, the builder DSL, ComfyUI's validation and format conversion (torch-free)."""

from __future__ import annotations

from . import builtin
from .nodes import InputRef, Node, Output
from .schema import InputSpec, NodeSpec, Schema, types_match
from .validate import ValidatedPrompt, check_input, check_value, find_cycle, validate_prompt
from .workflow import UnknownNodeError, Workflow

__all__ = ["builtin", "InputRef", "Node", "Output", "InputSpec", "NodeSpec", "Schema", "types_match",
           "ValidatedPrompt", "check_input", "check_value", "find_cycle", "validate_prompt", "UnknownNodeError", "Workflow"]
