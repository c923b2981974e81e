"""A fake Backend that emits realistic ComfyUI events from a worker thread, for fast widget and sweep tests.

It runs any API prompt: every node "executes" in id order, KSampler nodes report one progress event per step with
a preview, output nodes return an image whose colour depends on the seed and cfg. Unchanged nodes are cached
(like ComfyUI's classic cache, keyed by class and inputs), so sweeps can count executions.
"""

from __future__ import annotations

import itertools
import json
import threading
import time

from PIL import Image

from comfykit.errors import ExecutionError, InterruptedError
from comfykit.events import Event
from comfykit.job import Backend, Job
from comfykit.result import Result

SAMPLERS = ("KSampler", "KSamplerAdvanced")
OUTPUTS = ("SaveImage", "PreviewImage")


def _signature(prompt: dict, nid: str) -> str:
    """A node's class and inputs with links replaced by the linked node's signature (ComfyUI's cache key idea)."""
    node = prompt[nid]
    inputs = {k: _signature(prompt, v[0]) if isinstance(v, list) else v for k, v in node["inputs"].items()}
    return json.dumps([node["class_type"], inputs], sort_keys=True)


class FakeBackend(Backend):
    """``fail_node``: id of a node that raises; ``step_delay``: seconds per sampler step (for Stop tests)."""

    def __init__(self, step_delay: float = 0.0, fail_node: str | None = None):
        self.step_delay, self.fail_node = step_delay, fail_node
        self._cache: dict[str, str] = {}
        self._outputs: dict[str, tuple] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one run at a time, like the engine's worker
        self._ids = itertools.count(1)
        self.submitted: list[dict] = []

    def interrupt(self) -> None:
        self._stop.set()

    def submit(self, workflow, *, on_event=None, **options) -> Job:
        prompt = workflow.to_api() if hasattr(workflow, "to_api") else json.loads(json.dumps(workflow))
        self.submitted.append(prompt)
        job = Job(f"fake-{next(self._ids)}", [on_event], interrupt=self.interrupt)
        threading.Thread(target=self._run, args=(job, prompt), daemon=True).start()
        return job

    def _run(self, job: Job, prompt: dict) -> None:
        with self._lock:
            self._stop.clear()
            self._execute(job, prompt)

    def _execute(self, job: Job, prompt: dict) -> None:
        pid = job.prompt_id
        result = Result(pid, prompt)

        def emit(kind, _preview=None, **data):
            event = Event(kind, {**data, "prompt_id": pid}, preview=_preview)
            result.events.append(event)
            job.emit(event)

        signatures = {nid: _signature(prompt, nid) for nid in prompt}
        cached = [nid for nid, sig in signatures.items() if self._cache.get(nid) == sig]
        emit("execution_start", timestamp=0)
        emit("execution_cached", nodes=cached, timestamp=0)
        seed = cfg = 0
        for nid in sorted(prompt, key=int):
            node = prompt[nid]
            inputs = node["inputs"]
            if node["class_type"] in SAMPLERS:
                seed = inputs.get("seed", inputs.get("noise_seed", 0))
                cfg = inputs.get("cfg", 0)
            if nid in cached:
                result.cached.append(nid)
                if nid in self._outputs:  # like ComfyUI, cached output nodes still report their images
                    result.images_by_node[nid], result.outputs[nid] = self._outputs[nid]
                    emit("executed", node=nid, display_node=nid, output=result.outputs[nid])
                continue
            emit("executing", node=nid, display_node=nid)
            if nid == self.fail_node:
                data = {"prompt_id": pid, "node_id": nid, "node_type": node["class_type"], "executed": [],
                        "exception_message": "boom", "exception_type": "RuntimeError",
                        "traceback": ["Traceback (most recent call last):", "RuntimeError: boom"],
                        "current_inputs": {}, "current_outputs": [], "timestamp": 0}
                job.emit(Event("execution_error", data))
                result.status, result.error = "error", ExecutionError(data)
                job.finish(result, result.error)
                return
            if node["class_type"] in SAMPLERS:
                steps = int(inputs["steps"])
                for step in range(steps):
                    if self._stop.is_set():
                        data = {"prompt_id": pid, "node_id": nid, "node_type": node["class_type"],
                                "executed": list(result.executed), "timestamp": 0}
                        job.emit(Event("execution_interrupted", data))
                        result.status, result.error = "interrupted", InterruptedError(data)
                        job.finish(result, result.error)
                        return
                    shade = int(255 * (step + 1) / steps)
                    emit("progress", value=step + 1, max=steps, node=nid,
                         _preview=Image.new("RGB", (8, 8), (shade, 0, 255 - shade)))
                    time.sleep(self.step_delay)
            if node["class_type"] in OUTPUTS:
                image = Image.new("RGB", (16, 16), (int(seed) % 256, int(cfg * 20) % 256, 99))
                result.images_by_node[nid] = [image]
                result.outputs[nid] = {"images": [{"filename": f"{pid}.png", "subfolder": "", "type": "output"}]}
                self._outputs[nid] = (result.images_by_node[nid], result.outputs[nid])
                emit("executed", node=nid, display_node=nid, output=result.outputs[nid])
            result.executed.append(nid)
            self._cache[nid] = signatures[nid]
        emit("execution_success", timestamp=0)
        job.finish(result)



def txt2img(ckpt_name="demo.safetensors", steps=4, width=64, height=64):
    """The classic text-to-image graph; returns the workflow and the nodes tests poke at."""
    try:
        from comfykit import Workflow
    except (ImportError, AttributeError):  # the graph package's __init__ may not have landed yet
        from comfykit.graph.workflow import Workflow

    wf = Workflow()
    model, clip, vae = wf.CheckpointLoaderSimple(ckpt_name=ckpt_name)
    pos = wf.CLIPTextEncode(text="a red fox in the snow", clip=clip)
    neg = wf.CLIPTextEncode(text="blurry", clip=clip)
    lat = wf.EmptyLatentImage(width=width, height=height, batch_size=1)
    out = wf.KSampler(model=model, positive=pos, negative=neg, latent_image=lat, seed=1, steps=steps, cfg=7.0,
                      sampler_name="euler", scheduler="normal")
    wf.SaveImage(images=wf.VAEDecode(samples=out, vae=vae), filename_prefix="ck")
    return wf, pos, neg, lat, out
