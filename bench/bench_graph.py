"""Graph-layer speed: build, validate and compile chains of 100 / 1,000 / 10,000 nodes, and cold import time.

Prints a table with ratios against a baseline in the same process (the same API dict built by hand), and with
``--append`` adds it to docs/benchmarks.md. Targets: 10,000 nodes under 100 ms, ``import comfykit`` under 0.3 s.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import comfykit as ck
from comfykit.graph import validate_prompt


def build(n: int) -> ck.Workflow:
    """A chain: EmptyLatentImage -> (n - 4) LatentUpscaleBy -> VAEDecode (+ VAELoader) -> SaveImage."""
    wf = ck.Workflow()
    x = wf.EmptyLatentImage(width=64, height=64)
    vae = wf.VAELoader(vae_name="vae.safetensors")
    for _ in range(n - 4):
        x = wf.LatentUpscaleBy(samples=x, scale_by=1.0)
    wf.SaveImage(images=wf.VAEDecode(samples=x, vae=vae))
    return wf


def by_hand(n: int) -> dict:
    """The same prompt as plain dicts: the floor any builder pays."""
    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "2": {"class_type": "VAELoader", "inputs": {"vae_name": "vae.safetensors"}}}
    prev = "1"
    for i in range(3, n - 1):
        prompt[str(i)] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": [prev, 0],
                          "upscale_method": "nearest-exact", "scale_by": 1.0}}
        prev = str(i)
    prompt[str(n - 1)] = {"class_type": "VAEDecode", "inputs": {"samples": [prev, 0], "vae": ["2", 0]}}
    prompt[str(n)] = {"class_type": "SaveImage", "inputs": {"images": [str(n - 1), 0], "filename_prefix": "x"}}
    return prompt


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cold_import(repeat: int = 5) -> float:
    code = "import time; t = time.perf_counter(); import comfykit; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(repeat)]
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--append", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()
    rows = []
    for n in (100, 1_000, 10_000):
        repeat = 5 if n < 10_000 else 3
        wf = build(n)
        hand = best(lambda n=n: by_hand(n), repeat)
        t_build = best(lambda n=n: build(n), repeat)
        t_validate = best(wf.validate, repeat)
        t_compile = best(lambda wf=wf: wf.to_api(validate=False), repeat)
        prompt = by_hand(n)
        t_vp = best(lambda prompt=prompt: validate_prompt(prompt), repeat)
        total = t_build + t_validate + t_compile
        rows.append((n, hand, t_build, t_validate, t_compile, total, t_vp))
    imp = cold_import()
    lines = ["| nodes | by hand (ms) | build (ms) | validate (ms) | to_api (ms) | total (ms) | total / by hand "
             "| validate_prompt alone (ms) |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, hand, b, v, c, total, vp in rows:
        lines.append(f"| {n:,} | {hand * 1e3:.1f} | {b * 1e3:.1f} | {v * 1e3:.1f} | {c * 1e3:.1f} | "
                     f"{total * 1e3:.1f} | {total / hand:.1f}x | {vp * 1e3:.1f} |")
    lines.append("")
    lines.append(f"Cold `import comfykit` (median of 5 subprocesses): {imp * 1e3:.0f} ms (target < 300 ms). "
                 f"10,000 nodes build + validate + compile: {rows[-1][5] * 1e3:.0f} ms (target < 100 ms). "
                 f"Load average while measuring: {os.getloadavg()[0]:.1f} (other jobs share the cores).")
    table = "\n".join(lines)
    print(table)
    if args.append:
        doc = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
        if not doc.exists():
            doc.write_text("# comfykit benchmarks\n")
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with doc.open("a") as f:
            f.write(f"\n## Graph layer (bench/bench_graph.py), {stamp}, 2-core CPU, Python "
                    f"{sys.version.split()[0]}\n\nA chain of LatentUpscaleBy nodes; best of 3-5 runs.\n\n{table}\n")


if __name__ == "__main__":
    main()
