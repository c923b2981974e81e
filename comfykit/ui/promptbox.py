"""PromptBox: a notebook form over a workflow with Generate/Stop, per-step progress, live preview and a gallery.

>>> box = ck.ui.PromptBox(wf, engine, fields=[pos.text, neg.text, out.seed, out.steps, out.cfg])  # doctest: +SKIP
>>> box                       # shows the form; or drive it from code:
>>> box.set(out.steps, 4); box.click(); box.wait().image

It consumes only the shared backend events (comfykit.events), so it works the same on the embedded Engine and on
a ComfyUI server.
"""

from __future__ import annotations

import html
import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as w

from ..errors import ComfykitError, ExecutionError, InterruptedError, ValidationError
from ..events import (
    EXECUTING,
    EXECUTION_CACHED,
    EXECUTION_ERROR,
    EXECUTION_INTERRUPTED,
    EXECUTION_START,
    EXECUTION_SUCCESS,
    PROGRESS,
    Event,
)
from ..job import Job
from ..result import Result
from ..sweep import input_ref, ref_key
from .fields import Field, default_refs, make_labels, prompt_roles
from .gallery import Gallery, image_bytes

_BLANK_PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f"
              b"\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x03\x00\x08\xfc\x02\xfe\xa7\x9a\xa0\xa0\x00"
              b"\x00\x00\x00IEND\xaeB`\x82")


def error_text(exc: BaseException) -> str:
    """What the widget shows for a failure: the node and the message, never a traceback."""
    if isinstance(exc, ExecutionError):
        return f"Node {exc.node_id} ({exc.node_type}) failed: {exc.exception_type}: {exc.exception_message}"
    if isinstance(exc, (ValidationError, InterruptedError, ComfykitError, ValueError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class PromptBox:
    """Form + Generate/Stop + progress + live preview + gallery for one workflow on one backend.

    ``fields``: node inputs as the graph layer's InputRefs (``pos.text``, ``out.seed``) or ``(node, "seed")``
    tuples; None picks prompts, sampler settings and image size. Widgets follow each input's schema: Textarea
    for multiline text, sliders for small number ranges, a checked text box for big ones (seed, steps),
    Dropdown for choices, and ComfyUI's control_after_generate (randomize/increment/decrement/fixed) for seeds.
    ``seed`` seeds the randomize control; ``save_dir`` is where the gallery's Save buttons write PNGs.

    Headless use: ``box.set(ref, value)``, ``box.click()`` or ``box.generate()``, ``box.wait()``; then inspect
    ``box.preview`` (Image), ``box.progress`` (IntProgress of the current node's steps), ``box.status``,
    ``box.gallery``, ``box.error`` / ``box.error_message`` and ``box.exception``.
    """

    def __init__(self, wf: Any, backend: Any, fields: Sequence[Any] | None = None, *,
                 preview_size: int = 384, save_dir: str | Path = "comfykit_outputs", seed: int | None = None):
        self.wf, self.backend = wf, backend
        self.rng = random.Random(seed)
        refs = [input_ref(f) for f in fields] if fields is not None else default_refs(wf)
        if not refs:
            raise ValueError("PromptBox found no inputs to show; pass fields=[pos.text, out.seed, ...]")
        labels = make_labels(refs, prompt_roles(wf))
        self.fields: list[Field] = [Field(r, lab, self.rng) for r, lab in zip(refs, labels)]
        self._by_key = {f.key: f for f in self.fields}
        self.preview_size = preview_size

        self.generate_button = w.Button(description="Generate", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.generate_button.on_click(lambda _b: self.generate())
        self.stop_button.on_click(lambda _b: self.stop())
        self.status = w.HTML("<span style='color:#666'>ready</span>")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="step", style={"description_width": "60px"})
        self.nodes_progress = w.IntProgress(value=0, min=0, max=1, description="nodes",
                                            style={"description_width": "60px"})
        self.error = w.HTML("")
        self.error_message = ""  # the plain text the error widget shows
        self.preview = w.Image(value=_BLANK_PNG, format="png", layout=w.Layout(max_width=f"{preview_size}px"))
        self.gallery = Gallery(save_dir)
        self.widget = w.VBox([
            w.VBox([f.box for f in self.fields]),
            w.HBox([self.generate_button, self.stop_button, self.status]),
            w.HBox([self.nodes_progress, self.progress]),
            self.error,
            self.preview,
            self.gallery.widget,
        ])

        self.job: Job | None = None  # the last submitted run
        self.result: Result | None = None
        self.exception: BaseException | None = None
        self.preview_image: Any = None  # the last preview as a PIL image
        self.preview_updates = 0
        self._lock = threading.Lock()
        self._pending: list[tuple[Job, threading.Thread]] = []
        self._current: Job | None = None
        self._nodes_total = 0
        self._last_prompt: dict[str, Any] = {}
        self._progress_node: str | None = None

    # -- fields -----------------------------------------------------------------------------------------------
    def field(self, ref: Any) -> Field:
        """The form field of an input (``out.seed`` or ``(node, "seed")``)."""
        key = ref_key(input_ref(ref))
        try:
            return self._by_key[key]
        except KeyError:
            shown = ", ".join(f.label for f in self.fields)
            raise KeyError(f"input {key[1]!r} of node {key[0]} is not in this PromptBox (fields: {shown})") from None

    def set(self, ref: Any, value: Any) -> None:
        """Put ``value`` in a field's widget, as a user typing it would (checked on generate)."""
        self.field(ref).set_widget(value)

    def values(self) -> dict[str, Any]:
        """{label: widget value} of every field, unparsed."""
        return {f.label: f.widget.value for f in self.fields}

    # -- running ----------------------------------------------------------------------------------------------
    def click(self) -> Job | None:
        """Press Generate, as a user would."""
        self.generate_button.click()
        return self.job

    def generate(self) -> Job | None:
        """Apply the form to the workflow and submit it in the background; None when a field is invalid."""
        self._show_error(None)
        self.job = None
        settings: dict[str, Any] = {}
        try:
            for f in self.fields:
                settings[f.label] = f.apply()
        except (ValueError, ValidationError) as exc:
            self._show_error(exc)
            return None
        try:
            # the API dict is a snapshot: editing the form while this runs cannot change the queued run
            prompt = self.wf.to_api() if hasattr(self.wf, "to_api") else self.wf
            if not self.running:  # while another run streams, its bars stay until this one starts
                self._reset_progress(prompt)
                self.status.value = "<span style='color:#666'>queued</span>"
            job = self.backend.submit(prompt, on_event=lambda event: self._on_event(event, prompt))
        except Exception as exc:  # a prompt the backend refuses (ValidationError) shows in the widget
            self._show_error(exc)
            self.status.value = "<span style='color:#b00020'>not started</span>"
            return None
        for f in self.fields:
            f.after_generate(settings.get(f.label))
        watcher = threading.Thread(target=self._watch, args=(job, settings, prompt), daemon=True,
                                   name=f"PromptBox-{job.prompt_id}")
        with self._lock:
            self._pending.append((job, watcher))
            self._current = job
        self.job = job
        self.stop_button.disabled = False
        watcher.start()
        return job

    def stop(self) -> None:
        """Stop the running generation (the backend's interrupt)."""
        with self._lock:
            job = self._current
        if job is not None and not job.done():
            job.interrupt()
        else:
            self.backend.interrupt()
        self.status.value = "<span style='color:#666'>stopping…</span>"

    def wait(self, timeout: float | None = None) -> Result | None:
        """Wait for every submitted run to finish; the last Result (None if it failed: see ``.error``)."""
        while True:
            with self._lock:
                pending = [t for _, t in self._pending if t.is_alive()]
            if not pending:
                return self.result
            for t in pending:
                t.join(timeout)
                if t.is_alive():
                    raise TimeoutError(f"generation did not finish within {timeout}s")

    @property
    def running(self) -> bool:
        with self._lock:
            return any(t.is_alive() for _, t in self._pending)

    # -- events (called on the backend's thread) ------------------------------------------------------------
    def _on_event(self, event: Event, prompt: Any) -> None:
        kind, data = event.type, event.data
        if kind == EXECUTION_START:
            self._reset_progress(prompt)
            with self._lock:
                self._current = next((j for j, _ in self._pending if j.prompt_id == event.prompt_id),
                                     self._current)
            self.status.value = "<span>started</span>"
        elif kind == EXECUTION_CACHED:
            self.nodes_progress.max = max(1, self._nodes_total - len(data.get("nodes", [])))
        elif kind == EXECUTING and data.get("node") is not None:
            node = str(data["node"])
            self.nodes_progress.value = min(self.nodes_progress.value + 1, self.nodes_progress.max)
            self.status.value = (f"<span>running node {html.escape(node)} ({html.escape(self._class_of(node))}) "
                                 f"&middot; {self.nodes_progress.value}/{self.nodes_progress.max}</span>")
        elif kind == PROGRESS:
            total, value = int(data.get("max", 1) or 1), int(data.get("value", 0))
            if event.node != self._progress_node:  # a new node's steps: restart the bar, keep it full after
                self._progress_node = event.node
                self.progress.value = 0
            if self.progress.max != total:
                self.progress.max = total
            self.progress.value = min(value, total)
            self.progress.description = f"{value}/{total}"
            if event.preview is not None:
                self._show_preview(event.preview)
        elif kind == EXECUTION_SUCCESS:
            self.nodes_progress.value = self.nodes_progress.max
            self.status.value = "<span style='color:#1b7f3b'>done</span>"
        elif kind == EXECUTION_INTERRUPTED:
            self.status.value = (f"<span style='color:#a65e00'>stopped at node {html.escape(str(event.node))} "
                                 f"(step {self.progress.value}/{self.progress.max})</span>")
        elif kind == EXECUTION_ERROR:
            self._show_error(ExecutionError(data))

    def _show_preview(self, image: Any) -> None:
        self.preview_image = image
        self.preview.format = "jpeg"
        self.preview.value = image_bytes(image, "jpeg", self.preview_size)
        self.preview_updates += 1

    def _watch(self, job: Job, settings: dict[str, Any], prompt: Any) -> None:
        try:
            result = job.result()
        except InterruptedError as exc:
            self.exception = exc
            if "stopped" not in self.status.value:  # stopped before it started: no interrupted event came
                self.status.value = "<span style='color:#a65e00'>stopped</span>"
        except Exception as exc:  # noqa: BLE001 - every failure ends up in the widget, not in the log
            self.exception = exc
            self._show_error(exc)
            self.status.value = "<span style='color:#b00020'>failed</span>"
        else:
            self.result, self.exception = result, None
            for image in result.images:
                self.gallery.add(image, settings, prompt if isinstance(prompt, dict) else None)
        finally:
            with self._lock:
                if self._current is job:
                    self._current = None
                idle = all(j is job or j.done() for j, _ in self._pending)
            if idle:
                self.stop_button.disabled = True

    # -- helpers --------------------------------------------------------------------------------------------
    def _class_of(self, node: str) -> str:
        return str(self._last_prompt.get(node, {}).get("class_type", ""))

    def _reset_progress(self, prompt: Any) -> None:
        self._last_prompt = prompt if isinstance(prompt, dict) else {}
        self._nodes_total = len(self._last_prompt)
        self.nodes_progress.max = max(1, self._nodes_total)
        self.nodes_progress.value = 0
        self.progress.value = 0
        self.progress.description = "step"
        self._progress_node = None

    def _show_error(self, exc: BaseException | None) -> None:
        if exc is None:
            self.error.value = self.error_message = ""
            return
        self.exception = exc
        self.error_message = error_text(exc)
        text = html.escape(self.error_message)
        self.error.value = (f"<div style='color:#b00020;border-left:3px solid #b00020;padding-left:6px;"
                            f"font-family:monospace;white-space:pre-wrap'>{text}</div>")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        return f"PromptBox({len(self.fields)} fields: {', '.join(f.label for f in self.fields)})"
