"""The embedded engine: ComfyUI's executor, caches and core nodes in this process, as a comfykit Backend."""

from __future__ import annotations

import gc
import logging
import os
import queue
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ComfykitError, InterruptedError, ValidationError, format_validation_message
from ..events import EXECUTION_INTERRUPTED, Event, EventCallback
from ..graph.prompt import is_ui_format, to_api_prompt
from ..graph.validate import ValidatedPrompt, find_cycle
from ..job import Backend, Job
from ..result import Result
from .executor import Executor, now_ms
from .folders import Folders

log = logging.getLogger(__name__)

PREVIEW_MODES = ("auto", "latent2rgb", "taesd", "none")
_STOP = object()


class Engine(Backend):
    """Runs ComfyUI API prompts in-process on torch, with ComfyUI's ordering, caching and events.

    >>> engine = Engine("models")                          # doctest: +SKIP
    >>> result = engine.run(wf)                            # a Workflow or an API dict
    >>> result.image                                       # PIL image of the first output

    Memory (see ``comfykit.engine.models.manager``): ``vram`` "high" | "normal" | "low" | "no" | "cpu" as ComfyUI's
    flags, ``reserve_vram`` GB left free, ``vram_budget`` GB the engine may use on the device (default: all that
    is free).

    Precision (see ``comfykit.engine.models.precision``): ``dtype`` the diffusion models', ``text_encoder_dtype``
    and ``vae_dtype`` (torch dtypes or "fp32" | "fp16" | "bf16"); None picks the device's: fp32 on the CPU; on a
    GPU fp16, with bf16 for FLUX.1 and the VAE where the GPU has native bf16 (on a T4: fp16 FLUX.1, fp32 VAE).

    Speed: ``compile`` True, a ``torch.compile`` mode ("max-autotune", ...) or a dict of its arguments compiles
    each diffusion network once (see ``comfykit.engine.compile``); ``channels_last`` stores convolution weights
    channels-last (None: the device's default, off).
    """

    def __init__(self, models_dir: str | os.PathLike | None = None, *, output_dir: str | os.PathLike | None = None,
                 input_dir: str | os.PathLike | None = None, temp_dir: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                 cache: str = "classic", cache_size: int | None = None, previews: str = "auto",
                 preview_size: int = 512, vram: str = "normal", reserve_vram: float = 0.0,
                 vram_budget: float | None = None, compile: bool | str | dict[str, Any] | None = False,  # noqa: A002
                 channels_last: bool | None = None, text_encoder_dtype: torch.dtype | str | None = None,
                 vae_dtype: torch.dtype | str | None = None):
        from .compile import compile_options
        from .models.manager import VRAM_MODES
        from .models.precision import parse_dtype

        if vram not in VRAM_MODES:
            raise ValueError(f"vram={vram!r} is not a memory mode; use one of {', '.join(VRAM_MODES)}")
        if previews not in PREVIEW_MODES:
            raise ValueError(f"previews={previews!r} is not a preview mode; use one of {', '.join(PREVIEW_MODES)}")
        self.folders = Folders(models_dir, output=output_dir, input=input_dir, temp=temp_dir)
        if vram == "cpu":
            device = "cpu"
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.vram = vram
        self.reserve_vram = float(reserve_vram)  # GB kept free for other programs, as ComfyUI's --reserve-vram
        self.vram_budget = vram_budget  # GB the engine may use on the device (None: what the device says is free)
        self.dtype = parse_dtype(dtype)
        self.text_encoder_dtype = parse_dtype(text_encoder_dtype, "text_encoder_dtype")
        self.vae_dtype = parse_dtype(vae_dtype, "vae_dtype")
        compile_options(compile)  # a bad value fails here, not at the first run
        self.compile = compile
        self.channels_last = channels_last
        self.previews = previews
        self.preview_size = int(preview_size)
        self.disable_metadata = False
        if cache == "lru" and cache_size is None:
            cache_size = 16
        self._executor = Executor(_node_classes(), cache=cache, cache_size=cache_size or 0,
                                  make_node=lambda cls: cls(self), on_oom=self._on_oom)
        self._models: Any = None
        self._preview_cache: tuple[Any, Any] | None = None
        self._schema_cache: tuple[dict[str, list[str]], dict[str, Any], Any] | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self._running: str | None = None
        self._run_lock = threading.Lock()
        self._state_lock = threading.Lock()  # guards _running/_cancelled against Job.interrupt() races
        self._cancelled: set[str] = set()

    def __repr__(self) -> str:
        return (f"Engine(models_dir={str(self.folders.models)!r}, device={str(self.device)!r}, "
                f"cache={self._executor.cache_mode!r}, previews={self.previews!r})")

    # -- models ------------------------------------------------------------------------------------------
    @property
    def models(self) -> Any:
        """The model manager that keeps loaded models between runs (created on first use)."""
        if self._models is None:
            from .models import ModelManager

            budget = None if self.vram_budget is None else int(self.vram_budget * 2**30)
            self._models = ModelManager(device=self.device, dtype=self.dtype, vram=self.vram, budget=budget,
                                        reserve=int(self.reserve_vram * 2**30), compile=self.compile,
                                        channels_last=self.channels_last, text_encoder_dtype=self.text_encoder_dtype,
                                        vae_dtype=self.vae_dtype)
        return self._models

    def call_with(self, fn: Any, *models: Any) -> Any:
        """Run ``fn()`` with ``models`` on the compute device (the manager offloads others on out-of-memory)."""
        return self.models.call(fn, *models)

    def _unload_models(self) -> None:
        if self._models is not None:
            self._models.unload_all()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _on_oom(self) -> None:
        log.warning("out of memory: dropping cached outputs and unloading models")
        self._executor.reset()
        self._unload_models()

    def _previewer(self, model: Any) -> Any:
        """The live-preview decoder for ``model``'s latent format, or None when previews are off."""
        if self.previews == "none":
            return None
        from .sampling.preview import Previewer

        fmt = model.latent_format
        taesd = None
        if self.previews != "latent2rgb" and fmt.taesd_decoder_name:
            # the cached vae_approx listing: no directory read per sampler node
            names = [n for n in self.folders.list_files("vae_approx")
                     if "/" not in n and n.startswith(fmt.taesd_decoder_name)]
            taesd = self.folders.folder("vae_approx") / names[0] if names else None
        key = (fmt.name, self.previews, str(taesd))
        if self._preview_cache is None or self._preview_cache[0] != key:
            method = "taesd" if taesd is not None else "latent2rgb"
            try:
                previewer = Previewer(fmt, method, taesd, self.preview_size, self.device)
            except ValueError:  # no latent2rgb factors and no TAESD file: run without previews
                previewer = None
            self._preview_cache = (key, previewer)
        return self._preview_cache[1]

    def sampler_callback(self, node: Any, model: Any) -> Callable[[int, int, Any, Any], None]:
        """The per-step hook of a sampler node: stop if interrupted, report ``progress`` (value = step + 1).

        A preview of the denoised x0 is attached only while someone listens (``node.ctx.wants_previews``): a
        :class:`~comfykit.events.LazyPreview` at most the decoded image's size, capped at ``preview_size``, whose
        PIL image is made by whoever reads it, off the sampling thread.
        """
        previewer: list[Any] = []  # made on the first step anyone wants a preview, then kept

        def callback(step: int, total_steps: int, x0: Any, x: Any) -> None:
            preview = None
            ctx = node.ctx
            if x0 is not None and ctx is not None and ctx.wants_previews:
                if not previewer:
                    previewer.append(self._previewer(model))
                if previewer[0] is not None:
                    preview = previewer[0].snapshot(x0)
            node.progress(step + 1, total_steps, preview)

        return callback

    # -- schema and validation ---------------------------------------------------------------------------
    def _schema(self) -> Any:
        """The Schema of the nodes and the files present now; rebuilt only when a folder listing changed."""
        from ..graph import Schema, builtin

        files = self.folders.files()  # cached listings: a stat per folder unless something changed
        cached = self._schema_cache
        if cached is None or cached[0] != files:
            info = builtin.object_info(files)
            cached = self._schema_cache = (files, info, Schema(info, "engine"))
        return cached[2]

    def object_info(self) -> dict[str, Any]:
        """``/object_info`` of the nodes this engine runs, with the model and input files present now."""
        return dict(self._schema().object_info)  # a new outer dict; the node entries are shared, do not edit

    def workflow(self) -> Any:
        """A new empty Workflow checked against this engine's nodes and files."""
        from ..graph import Workflow

        return Workflow(schema=self._schema())

    def validate(self, prompt: Any, partial_targets: list[str] | None = None) -> ValidatedPrompt:
        """Validate an API prompt (or Workflow, or UI-format dict) against the live file lists.

        Raises ValidationError with ComfyUI's 400 body. The answer can be given to :meth:`execute`, which then
        runs it without validating again.
        """
        return self._validate(prompt, self._schema(), partial_targets)

    def _validate(self, prompt: Any, schema: Any, partial_targets: list[str] | None) -> ValidatedPrompt:
        from ..graph import validate_prompt

        if not isinstance(prompt, dict) or is_ui_format(prompt):
            prompt = to_api_prompt(prompt, schema).prompt
        return validate_prompt(prompt, schema, partial_targets)

    # -- synchronous execution ---------------------------------------------------------------------------
    def execute(self, prompt: Any, *, prompt_id: str, extra_data: dict[str, Any] | None = None,
                outputs: list[str] | None = None, on_event: EventCallback | None = None,
                previews: bool | Callable[[], bool] | None = None, keep_previews: bool = False) -> Result:
        """Run one prompt in this thread; raises only ValidationError (failures are in the Result).

        A :class:`~comfykit.graph.ValidatedPrompt` (from :meth:`validate`) runs as it is; anything else is
        validated first. ``previews``: build step previews (a bool, or a callable asked at each step); None
        means "when there is an ``on_event``". ``keep_previews`` keeps them in ``Result.events`` as well.
        """
        wants = _preview_rule(previews, on_event is not None)
        with self._run_lock:  # one prompt at a time, whichever thread calls
            with self._state_lock:
                # cleared before validating: an interrupt() that comes while the prompt is validated stops it
                self._executor.interrupt_flag.clear()
                self._running = prompt_id
                if prompt_id in self._cancelled:  # interrupted between leaving the queue and starting
                    self._cancelled.discard(prompt_id)
                    self._executor.interrupt_flag.set()
            try:
                validated = prompt if isinstance(prompt, ValidatedPrompt) else self.validate(prompt, outputs)
                valid = set(validated.outputs)  # a set: a prompt may list 100k output targets
                targets = list(validated.outputs) if outputs is None else [o for o in outputs if o in valid]
                # no_grad, not ComfyUI's inference_mode: models loaded here and the tensors the nodes return
                # stay usable (and patchable in place) by notebook code running outside the engine
                with torch.no_grad():
                    return self._executor.execute(validated.prompt, prompt_id, outputs=targets,
                                                  extra_data=extra_data or {}, on_event=on_event,
                                                  clear_interrupt=False, previews=wants,
                                                  keep_previews=keep_previews)
            finally:
                with self._state_lock:
                    self._running = None

    # -- queued execution --------------------------------------------------------------------------------
    def submit(self, workflow: Any, *, on_event: EventCallback | None = None, prompt_id: str | None = None,
               extra_data: dict[str, Any] | None = None, outputs: list[str] | None = None,
               previews: bool | None = None, keep_previews: bool = False, **options: Any) -> Job:
        """Validate a Workflow, API dict or UI-format dict once and queue it on the worker thread; returns its Job.

        ``previews`` None builds step previews only while someone listens: an ``on_event`` callback, or code
        iterating the Job (so ``run(wf)`` builds none). ``keep_previews=True`` also keeps them in
        ``Result.events``.
        """
        if options:
            raise TypeError(f"Engine.submit() got unexpected options {sorted(options)}")
        extra_data = dict(extra_data or {})
        # like ComfyUI's page: embed the UI graph so a saved PNG opens in ComfyUI
        want_ui = "extra_pnginfo" not in extra_data
        schema = self._schema()
        api = to_api_prompt(workflow, schema, ui=want_ui)  # validated below, against the live files
        validated = self._validate(api.prompt, schema, outputs)  # the run's only validation: the worker trusts it
        if validated.node_errors:  # ComfyUI would silently drop these outputs; a Python caller wants to know
            error = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                     "details": "", "extra_info": {}}
            raise ValidationError(format_validation_message(error, validated.node_errors), error,
                                  validated.node_errors)
        cycle = find_cycle(validated.prompt)
        if cycle:  # ComfyUI finds it only when executing; a Python caller is told before anything runs
            path = " -> ".join(f"#{i} {validated.prompt[i]['class_type']}" for i in cycle)
            message = f"the workflow has a cycle: {path}; a node cannot depend on its own output"
            raise ValidationError(message, {"type": "invalid_prompt", "message": message, "details": "",
                                            "extra_info": {}}, {})
        if want_ui and api.ui is not None:
            extra_data["extra_pnginfo"] = {"workflow": api.ui}
        prompt_id = prompt_id or str(uuid.uuid4())
        job = Job(prompt_id, [on_event], interrupt=lambda: self._interrupt_job(prompt_id))
        wants = _preview_rule(previews, lambda: job.listening)
        self._ensure_worker()
        self._queue.put((job, validated, extra_data, outputs, wants, keep_previews))
        return job

    def _ensure_worker(self) -> None:
        with self._worker_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="comfykit-engine", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            job, validated, extra_data, outputs, previews, keep_previews = item
            with self._state_lock:
                cancelled = job.prompt_id in self._cancelled
                self._cancelled.discard(job.prompt_id)
            if cancelled:
                data = {"prompt_id": job.prompt_id, "node_id": None, "node_type": None, "executed": [],
                        "timestamp": now_ms()}
                job.emit(Event(EXECUTION_INTERRUPTED, data))
                job.finish(Result(prompt_id=job.prompt_id, prompt=validated.prompt, status="interrupted",
                                  error=InterruptedError(data)), InterruptedError(data))
                continue
            try:
                result = self.execute(validated, prompt_id=job.prompt_id, extra_data=extra_data, outputs=outputs,
                                      on_event=job.emit, previews=previews, keep_previews=keep_previews)
            except ComfykitError as exc:
                job.finish(None, exc)
            except Exception as exc:  # noqa: BLE001 - a bug here must not kill the worker thread
                log.exception("engine worker failed on prompt %s", job.prompt_id)
                job.finish(None, exc)
            else:
                job.finish(result, result.error)

    def interrupt(self) -> None:
        """Stop the running prompt at the next node or sampler step (ends with ``execution_interrupted``)."""
        self._executor.interrupt_flag.set()

    def _interrupt_job(self, prompt_id: str) -> None:
        with self._state_lock:
            if self._running == prompt_id:
                self._executor.interrupt_flag.set()
            else:
                self._cancelled.add(prompt_id)

    def shutdown(self) -> None:
        """Stop the worker thread after the queued jobs (the engine can still ``execute``)."""
        with self._worker_lock:
            if self._worker is not None and self._worker.is_alive():
                self._queue.put(_STOP)
                self._worker.join(timeout=60)
            self._worker = None

    # -- memory and stats --------------------------------------------------------------------------------
    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """Drop every cached node output (``free_memory``) and unload the loaded models (``unload_models``)."""
        if free_memory:
            self._executor.reset()
        if unload_models:
            self._unload_models()

    def system_stats(self) -> dict[str, Any]:
        """ComfyUI's ``/system_stats`` answer for this process and device."""
        from .. import __version__

        ram_total, ram_free = _ram()
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            free, total = torch.cuda.mem_get_info(index)
            reserved = torch.cuda.memory_reserved(index)
            allocated = torch.cuda.memory_allocated(index)
            device = {"name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda", "index": index,
                      "vram_total": total, "vram_free": free, "torch_vram_total": reserved,
                      "torch_vram_free": reserved - allocated}
        else:
            device = {"name": str(self.device), "type": self.device.type, "index": self.device.index,
                      "vram_total": ram_total, "vram_free": ram_free, "torch_vram_total": ram_total,
                      "torch_vram_free": ram_free}
        return {"system": {"os": os.name, "ram_total": ram_total, "ram_free": ram_free,
                           "comfyui_version": f"0.3.64 (comfykit {__version__})",
                           "required_frontend_version": "", "installed_templates_version": "",
                           "required_templates_version": "", "python_version": sys.version,
                           "pytorch_version": torch.__version__, "embedded_python": False,
                           "argv": list(sys.argv)},
                "devices": [device]}

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def _node_classes() -> dict[str, type]:
    from ..nodes import NODE_CLASS_MAPPINGS

    return dict(NODE_CLASS_MAPPINGS)


def _preview_rule(previews: bool | Callable[[], bool] | None,
                  default: bool | Callable[[], bool]) -> Callable[[], bool]:
    """``previews`` (or ``default`` when it is None) as a zero-argument callable asked at each step."""
    rule = default if previews is None else previews
    if callable(rule):
        return rule
    flag = bool(rule)
    return lambda: flag


def _ram() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0


