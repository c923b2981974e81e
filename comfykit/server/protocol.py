"""What the HTTP server needs from its engine: a small typed contract instead of guessed attribute names.

:class:`comfykit.engine.Engine` satisfies it; so can a test double or another in-process backend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..events import EventCallback


@runtime_checkable
class ServerFolders(Protocol):
    """The engine's folders: where files are (``folder``) and which ones a combo offers (``list_files``)."""

    def folder(self, kind: str) -> Path:
        """The directory of ``kind`` ("output", "input", "temp" or a model folder); ValueError if unknown."""
        ...

    def list_files(self, kind: str) -> list[str]:
        """Relative paths of the files of ``kind``; ValueError for a folder the engine does not know."""
        ...


@runtime_checkable
class ServerEngine(Protocol):
    """An engine the server can drive: validate on POST, execute on its worker, answer the info routes."""

    folders: ServerFolders

    def validate(self, prompt: Any, partial_targets: list[str] | None = None) -> Any:
        """A ValidatedPrompt, or ValidationError with ComfyUI's 400 body."""
        ...

    def execute(self, prompt: Any, *, prompt_id: str, extra_data: dict[str, Any] | None = None,
                outputs: list[str] | None = None, on_event: EventCallback | None = None,
                previews: bool | Callable[[], bool] | None = None) -> Any:
        """Run a ValidatedPrompt without validating it again; returns a Result."""
        ...

    def interrupt(self) -> None: ...

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None: ...

    def object_info(self) -> dict[str, Any]: ...

    def system_stats(self) -> dict[str, Any]: ...


def check_engine(engine: Any) -> ServerEngine:
    """``engine`` if it offers what the server calls; else TypeError naming what is missing."""
    missing = [name for name in ("validate", "execute", "interrupt", "free", "object_info", "system_stats")
               if not callable(getattr(engine, name, None))]
    folders = getattr(engine, "folders", None)
    if not isinstance(folders, ServerFolders):
        missing.append("folders (with .folder(kind) and .list_files(kind))")
    if missing:
        raise TypeError(f"the server needs a comfykit Engine (or an object with the same methods); "
                        f"{type(engine).__name__} lacks {', '.join(missing)}")
    return engine


def engine_dirs(engine: ServerEngine) -> dict[str, str]:
    """The output/input/temp folders of an engine, from ``engine.folders.folder(kind)``."""
    return {kind: str(engine.folders.folder(kind)) for kind in ("output", "input", "temp")}


def list_files(engine: ServerEngine, folder: str) -> list[str]:
    """Files the engine sees in a models folder (or input/output); [] when it has no such folder."""
    try:
        return list(engine.folders.list_files(folder))
    except (KeyError, ValueError, OSError):
        return []
