"""The one exception family of comfykit: validation, execution, model and server errors."""

from __future__ import annotations

from typing import Any


class ComfykitError(Exception):
    """Base class of every error comfykit raises on purpose."""


class ValidationError(ComfykitError, ValueError):
    """A workflow that ComfyUI would refuse, with ComfyUI's own 400 body attached.

    ``error`` and ``node_errors`` have exactly the shapes of ComfyUI's ``POST /prompt`` answer::

        {"error": {"type", "message", "details", "extra_info"},
         "node_errors": {node_id: {"errors": [...], "dependent_outputs": [...], "class_type": str}}}
    """

    def __init__(self, message: str, error: dict[str, Any] | None = None,
                 node_errors: dict[str, Any] | None = None):
        super().__init__(message)
        self.error = error or {"type": "invalid_prompt", "message": message, "details": "", "extra_info": {}}
        self.node_errors = node_errors or {}

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt from its own fields, so it crosses processes (Ray, multiprocessing) with its 400 body intact
        return type(self), (str(self), self.error, self.node_errors)

    def to_dict(self) -> dict[str, Any]:
        """The ``{"error": ..., "node_errors": ...}`` dict ComfyUI answers with HTTP 400."""
        return {"error": self.error, "node_errors": self.node_errors}

    @classmethod
    def from_response(cls, body: dict[str, Any]) -> ValidationError:
        """Build the error from a ComfyUI 400 body, with a readable message."""
        error = body.get("error") or {}
        if isinstance(error, str):  # some ComfyUI forks answer a bare string
            error = {"type": "invalid_prompt", "message": error, "details": "", "extra_info": {}}
        node_errors = body.get("node_errors") or {}
        return cls(format_validation_message(error, node_errors), error, node_errors)


def format_validation_message(error: dict[str, Any], node_errors: dict[str, Any]) -> str:
    """One line for the prompt-level error, then one line per node error (id, class, input, why)."""
    lines = [error.get("message", "invalid prompt")]
    if error.get("details") and not node_errors:
        lines[0] += f": {error['details']}"
    for node_id, entry in node_errors.items():
        for err in entry.get("errors", []):
            name = (err.get("extra_info") or {}).get("input_name")
            where = f"node {node_id} ({entry.get('class_type', '?')})" + (f" input '{name}'" if name else "")
            text = err.get("details") or err.get("message", "")
            lines.append(f"  {where}: {err.get('message', '')}" + (f" - {text}" if text != err.get("message") else ""))
    return "\n".join(lines)


class ExecutionError(ComfykitError, RuntimeError):
    """A node raised while the workflow ran; ``data`` is ComfyUI's ``execution_error`` message."""

    def __init__(self, data: dict[str, Any]):
        self.data = dict(data)
        self.prompt_id = data.get("prompt_id")
        self.node_id = data.get("node_id")
        self.node_type = data.get("node_type")
        self.exception_type = data.get("exception_type", "")
        self.exception_message = data.get("exception_message", "")
        self.traceback = list(data.get("traceback") or [])
        super().__init__(f"node {self.node_id} ({self.node_type}) failed: "
                         f"{self.exception_type}: {self.exception_message}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default would call ExecutionError(message) and lose the data; the cause stays behind
        return type(self), (self.data,)


class InterruptedError(ComfykitError):  # noqa: A001 - deliberately shadows the builtin inside comfykit
    """The run was stopped by ``interrupt()``; ``data`` is ComfyUI's ``execution_interrupted`` message."""

    def __init__(self, data: dict[str, Any]):
        self.data = dict(data)
        self.prompt_id = data.get("prompt_id")
        self.node_id = data.get("node_id")
        self.node_type = data.get("node_type")
        super().__init__(f"interrupted at node {self.node_id} ({self.node_type})")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.data,)


class ModelError(ComfykitError):
    """A model file that is missing, corrupt, truncated or of an unknown kind."""


class ServerError(ComfykitError):
    """A ComfyUI server that would not start, died, or stopped answering."""
