"""Scale out on Ray: run many workflows across several engines, GPUs or ComfyUI servers (``ck.RayPool``).

>>> pool = ck.RayPool(workers=2, backend=ck.Engine, models_dir="models")       # doctest: +SKIP
>>> for r in pool.run_many(wf, overrides=[{sampler.seed: s} for s in range(100)]):
...     r.image.save(f"out/{r.index:03}.png")

Each worker is a Ray actor holding one backend (an :class:`~comfykit.engine.Engine`, or a
:class:`~comfykit.client.ComfyServer` connection) that keeps its models loaded between jobs. The pool is itself a
:class:`~comfykit.job.Backend`: ``submit`` returns a :class:`~comfykit.job.Job` whose events are forwarded from the
worker, so ``ck.sweep(..., backend=pool)`` and the widgets work unchanged. Ray is the optional extra
``comfykit[ray]`` and is imported only when a pool is created.

Modules: ``raypool`` (the pool and its scheduling threads), ``worker`` (the Ray actor), ``prompts`` (overrides
and the model names a job loads), ``routing`` (which job a free worker takes, GPU shares).
"""

from __future__ import annotations

from .prompts import MODEL_INPUTS, apply_overrides, models_of, to_prompt
from .raypool import PoolResult, RayPool
from .routing import gpu_share, pick_task
from .worker import PoolWorker

__all__ = ["RayPool", "PoolResult", "PoolWorker", "MODEL_INPUTS", "apply_overrides", "gpu_share", "models_of",
           "pick_task", "to_prompt"]
