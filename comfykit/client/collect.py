"""Turn what a run reported (WebSocket events, ``/history`` item) into a Result and its error."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ExecutionError, InterruptedError, ServerError
from ..events import (
    EXECUTION_CACHED,
    EXECUTION_ERROR,
    EXECUTION_INTERRUPTED,
    EXECUTION_SUCCESS,
    TERMINAL,
    Event,
)
from ..result import Result

if TYPE_CHECKING:
    from .router import RunState
    from .server import ComfyServer

_STATUS = {EXECUTION_SUCCESS: "success", EXECUTION_ERROR: "error", EXECUTION_INTERRUPTED: "interrupted"}


def history_item(answer: Any, prompt_id: str) -> dict[str, Any] | None:
    """The item of ``prompt_id`` in a ``GET /history/{id}`` answer (``{}`` when unknown gives None)."""
    if isinstance(answer, dict) and isinstance(answer.get(prompt_id), dict):
        return answer[prompt_id]
    return None


def terminal_from_history(item: dict[str, Any], prompt_id: str) -> Event | None:
    """The end message recorded in a history item's status, for a run whose socket missed it."""
    status = item.get("status") or {}
    for entry in reversed(status.get("messages") or []):
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] in TERMINAL:
            return Event(entry[0], dict(entry[1] or {}, prompt_id=prompt_id))
    if status.get("status_str") == "success" or (not status and item.get("outputs") is not None):
        return Event(EXECUTION_SUCCESS, {"prompt_id": prompt_id})
    if status.get("status_str") == "error":
        return Event(EXECUTION_ERROR, {"prompt_id": prompt_id, "exception_message": "the run failed (see the "
                                       "server log)", "exception_type": "", "traceback": []})
    return None


def _cached_from_history(item: dict[str, Any]) -> list[str]:
    for entry in (item.get("status") or {}).get("messages") or []:
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] == EXECUTION_CACHED:
            return [str(n) for n in (entry[1] or {}).get("nodes") or []]
    return []


def _ordered_outputs(run: RunState, item: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Output ui dicts in the order their ``executed`` events came, then any only history knows."""
    merged = dict(run.outputs)
    for node, ui in ((item or {}).get("outputs") or {}).items():
        merged[str(node)] = ui  # history is authoritative (it also holds cached nodes' ui)
    order = list(run.outputs) + [n for n in merged if n not in run.outputs]
    return {n: merged[n] for n in order}


def build_result(server: ComfyServer, run: RunState, item: dict[str, Any] | None) -> tuple[Result, Exception | None]:
    """The Result of a finished run (images fetched through /view) and the error ``result()`` raises."""
    if run.terminal is None and item is not None:
        end = terminal_from_history(item, run.prompt_id)
        if end is not None:
            if not run.cached:
                run.cached = _cached_from_history(item)
            run.terminal = end
            run.emit(end)  # the socket missed it; consumers still see how the run ended
    end = run.terminal
    if end is None:
        raise ServerError(f"prompt {run.prompt_id} ended without a success, error or interrupt message "
                          f"and the server has no history of it")
    status = _STATUS[end.type]
    executed = list(run.executed)
    for node in end.data.get("executed") or []:
        if str(node) not in executed:
            executed.append(str(node))
    outputs = _ordered_outputs(run, item)
    images_by_node: dict[str, list[Any]] = {}
    files: list[Path] = []
    for node, ui in outputs.items():
        refs = [r for r in (ui or {}).get("images") or [] if isinstance(r, dict) and r.get("filename")]
        if not refs:
            continue
        if run.fetch_images:
            images_by_node[node] = [server.view(r["filename"], r.get("subfolder", ""), r.get("type", "output"))
                                    for r in refs]
        if server.output_dir is not None:
            for r in refs:
                if r.get("type", "output") == "output":
                    path = server.output_dir / r.get("subfolder", "") / r["filename"]
                    if path.is_file():
                        files.append(path)
    prompt = run.prompt
    recorded = (item or {}).get("prompt")
    if isinstance(recorded, (list, tuple)) and len(recorded) > 2 and isinstance(recorded[2], dict):
        prompt = recorded[2]  # the prompt after the server's validation coercion
    error: Exception | None = None
    if status == "error":
        error = ExecutionError(end.data)
    elif status == "interrupted":
        error = InterruptedError(end.data)
    result = Result(prompt_id=run.prompt_id, prompt=prompt, status=status, outputs=outputs,
                    images_by_node=images_by_node, files=files, executed=executed, cached=list(run.cached),
                    timings=dict(run.timings), events=list(run.events), error=error)
    return result, error
