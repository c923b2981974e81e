"""Throughput of RayPool with 1 and 2 workers against one in-process Engine, on a batch of tiny jobs.

    python bench/bench_pool.py                 # 24 jobs of 64x64, 2 steps; appends to docs/benchmarks.md
    python bench/bench_pool.py --jobs 48 --no-append

Ratios are against the in-process engine with one torch thread, the thread count Ray gives a 1-CPU worker, so
"pool, 1 worker" shows what the pool costs per job (start-up excluded: every configuration runs one warm-up job
first, so each worker has its checkpoint loaded before the clock starts).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def txt2img(ckpt: str, size: int, steps: int):
    import comfykit as ck

    wf = ck.Workflow()
    loader = wf.CheckpointLoaderSimple(ckpt_name=ckpt)
    pos = wf.CLIPTextEncode(text="a lighthouse at dusk", clip=loader.CLIP)
    neg = wf.CLIPTextEncode(text="", clip=loader.CLIP)
    latent = wf.EmptyLatentImage(width=size, height=size, batch_size=1)
    sampler = wf.KSampler(model=loader.MODEL, positive=pos, negative=neg, latent_image=latent, seed=0, steps=steps,
                          cfg=7.0, sampler_name="euler", scheduler="normal")
    wf.PreviewImage(images=wf.VAEDecode(samples=sampler, vae=loader.VAE))
    return wf, sampler


def time_engine(options: dict, wf, sampler, jobs: int, threads: int | None) -> float:
    import torch

    from comfykit.engine import Engine

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        engine = Engine(**options)
        engine.run(wf)  # warm-up: load the checkpoint
        start = time.perf_counter()
        for seed in range(1, jobs + 1):
            sampler.seed = seed
            engine.run(wf)
        elapsed = time.perf_counter() - start
        engine.shutdown()
    finally:
        torch.set_num_threads(before)
    return elapsed


def time_pool(options: dict, wf, sampler, jobs: int, workers: int) -> float:
    from comfykit.engine import Engine
    from comfykit.pool import RayPool

    with RayPool(workers=workers, backend=Engine, **options) as pool:
        # warm-up: one job per worker, so every worker has loaded the checkpoint before timing
        list(pool.run_many(wf, overrides=[{sampler.seed: 0}] * workers, progress=False))
        start = time.perf_counter()
        results = list(pool.run_many(wf, overrides=[{sampler.seed: s} for s in range(1, jobs + 1)],
                                     progress=False))
        elapsed = time.perf_counter() - start
    assert len(results) == jobs and all(r.ok for r in results)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--no-append", action="store_true", help="print the table only")
    args = parser.parse_args()

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray
    import torch

    from comfykit import demo

    tmp = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    ckpt = demo.ensure_demo_checkpoint(tmp / "models")
    options = {"models_dir": str(tmp / "models"), "output_dir": str(tmp / "output"), "temp_dir": str(tmp / "temp"),
               "previews": "none"}
    wf, sampler = txt2img(ckpt, args.size, args.steps)

    rows = [("engine, in-process, 1 torch thread", time_engine(options, wf, sampler, args.jobs, threads=1)),
            (f"engine, in-process, {torch.get_num_threads()} torch threads",
             time_engine(options, wf, sampler, args.jobs, threads=None))]
    ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, object_store_memory=200 * 1024**2,
             log_to_driver=False)
    try:
        for workers in (1, 2):
            rows.append((f"RayPool, {workers} worker{'s' if workers > 1 else ''}",
                         time_pool(options, wf, sampler, args.jobs, workers)))
    finally:
        ray.shutdown()

    base = rows[0][1]
    lines = [f"{args.jobs} jobs of {args.size}x{args.size}, {args.steps} euler steps, demo checkpoint "
             f"(tiny random SD1 weights), previews off.", "",
             "| configuration | seconds | jobs/s | ms/job | time vs engine (1 thread) |",
             "|---|---:|---:|---:|---:|"]
    for name, secs in rows:
        lines.append(f"| {name} | {secs:.2f} | {args.jobs / secs:.2f} | {1000 * secs / args.jobs:.0f} | "
                     f"{secs / base:.2f} |")
    overhead = (rows[2][1] - base) / args.jobs * 1000
    speedup = rows[2][1] / rows[3][1]
    lines += ["", f"Pool overhead per job (1 worker vs in-process engine): {overhead:+.0f} ms; "
                  f"2 workers vs 1 worker: {speedup:.2f}x throughput."]
    table = "\n".join(lines)
    print(table)
    if args.no_append:
        return
    import comfykit

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
               f"torch {torch.__version__}, ray {ray.__version__}, comfykit {comfykit.__version__}")
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"\n## RayPool throughput ({when})\n\nMachine: {machine}. Script: `bench/bench_pool.py`.\n\n{table}\n"
    path.write_text(text.rstrip("\n") + "\n" + section)
    print(f"appended to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
