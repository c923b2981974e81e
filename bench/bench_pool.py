"""Throughput of RayPool with 1 and 2 workers against one in-process Engine, on a batch of tiny jobs.

    python bench/bench_pool.py                 # 24 jobs of 64x64, 2 steps; appends to docs/benchmarks.md
    python bench/bench_pool.py --jobs 48 --no-append

Ratios are against the in-process engine with one torch thread, the thread count Ray gives a 1-CPU worker.
Every configuration runs a warm-up job per worker first, so checkpoints are loaded before the clock starts. The
pool's own cost per job is measured directly: wall time minus the time the worker spent inside its engine.
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


def timed(run_batch, rounds: int) -> float:
    """Best of ``rounds`` timings of ``run_batch()`` (the machine is shared: the minimum is the least noisy)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run_batch()
        best = min(best, time.perf_counter() - start)
    return best


def engine_batch(engine, wf, sampler, jobs: int):
    def run() -> None:
        for seed in range(1, jobs + 1):
            sampler.seed = seed
            engine.run(wf)
    return run


def time_pool(pool, wf, sampler, jobs: int, rounds: int) -> tuple[float, float]:
    """Best wall time of ``rounds`` batches and, for that batch, the workers' summed time inside their engines."""
    def busy() -> float:
        return sum(row["busy_s"] for row in pool.stats())

    best = (float("inf"), 0.0)
    for _ in range(rounds):
        before = busy()
        start = time.perf_counter()
        results = list(pool.run_many(wf, overrides=[{sampler.seed: s} for s in range(1, jobs + 1)],
                                     progress=False))
        wall = time.perf_counter() - start
        assert len(results) == jobs and all(r.ok for r in results)
        best = min(best, (wall, busy() - before))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per configuration; the best counts")
    parser.add_argument("--no-append", action="store_true", help="print the table only")
    args = parser.parse_args()

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # one thread for every math library, as Ray sets for a 1-CPU worker, before torch is imported
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import ray
    import torch

    from comfykit import demo

    tmp = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    ckpt = demo.ensure_demo_checkpoint(tmp / "models")
    options = {"models_dir": str(tmp / "models"), "output_dir": str(tmp / "output"), "temp_dir": str(tmp / "temp"),
               "previews": "none"}
    wf, sampler = txt2img(ckpt, args.size, args.steps)

    from comfykit.engine import Engine
    from comfykit.pool import RayPool

    # one torch thread everywhere: what Ray gives a 1-CPU worker, so the ratios compare like with like
    torch.set_num_threads(1)
    engine = Engine(**options)
    engine.run(wf)  # warm-up: load the checkpoint
    rows = [("engine, in-process", timed(engine_batch(engine, wf, sampler, args.jobs), args.rounds))]
    engine.shutdown()
    ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, object_store_memory=200 * 1024**2,
             log_to_driver=False)
    busy = {}
    try:
        for workers in (1, 2):
            with RayPool(workers=workers, backend=Engine, **options) as pool:
                # warm-up: one job per worker, so every worker has loaded the checkpoint before timing
                list(pool.run_many(wf, overrides=[{sampler.seed: 0}] * workers, progress=False))
                secs, busy[workers] = time_pool(pool, wf, sampler, args.jobs, args.rounds)
            rows.append((f"RayPool, {workers} worker{'s' if workers > 1 else ''}", secs))
    finally:
        ray.shutdown()

    base = rows[0][1]
    lines = [f"{args.jobs} jobs of {args.size}x{args.size}, {args.steps} euler steps, demo checkpoint "
             f"(tiny random SD1 weights), previews off, one torch thread per engine; best of {args.rounds} rounds.",
             "", "| configuration | seconds | jobs/s | ms/job | time vs one engine |",
             "|---|---:|---:|---:|---:|"]
    for name, secs in rows:
        lines.append(f"| {name} | {secs:.2f} | {args.jobs / secs:.2f} | {1000 * secs / args.jobs:.0f} | "
                     f"{secs / base:.2f} |")
    # the pool's own cost: wall time the single worker was not inside its engine (Ray calls, transfers, routing)
    overhead = (rows[1][1] - busy[1]) / args.jobs * 1000
    engine_ms = busy[1] / args.jobs * 1000
    lines += ["", f"Pool overhead per job, 1 worker: {overhead:.1f} ms of {1000 * rows[1][1] / args.jobs:.0f} ms "
                  f"(the worker spent {engine_ms:.0f} ms/job inside its engine). 2 workers vs 1: "
                  f"{rows[1][1] / rows[2][1]:.2f}x throughput, workers busy {100 * busy[2] / (2 * rows[2][1]):.0f}% "
                  "of the wall time.",
              "", f"The 'vs one engine' column also holds process differences: the in-process engine took "
                  f"{1000 * base / args.jobs:.0f} ms/job, the same engine inside the Ray worker {engine_ms:.0f} ms/job; "
                  "the overhead figure above is the pool's own cost."]
    table = "\n".join(lines)
    print(table)
    if args.no_append:
        return
    import comfykit

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
               f"torch {torch.__version__}, ray {ray.__version__}, comfykit {comfykit.__version__}, "
               f"load average {os.getloadavg()[0]:.1f} at the end (other processes share the cores)")
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"\n## RayPool throughput ({when})\n\nMachine: {machine}. Script: `bench/bench_pool.py`.\n\n{table}\n"
    path.write_text(text.rstrip("\n") + "\n" + section)
    print(f"appended to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
