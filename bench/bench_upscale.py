"""Peak memory and time of a 4x ESRGAN upscale of a 512x512 image to 2048x2048 on the CPU.

    python bench/bench_upscale.py [--tiles auto,512] [--size 512] [--threads 0] [--write]

The network is a real-size RRDBNet (64 features, 23 blocks, growth 32: RealESRGAN_x4plus / 4x-UltraSharp) with
random weights, written to a temporary .pth in the ESRGAN repository's key layout and loaded through
``load_upscale_model``. Each tile setting runs in a fresh process: it loads the model, resets the kernel's peak
RSS counter (/proc/self/clear_refs), upscales, and reports the peak resident memory above what the loaded model
and the input already used. "auto" is what ImageUpscaleWithModel does on the CPU (``pick_tile`` under
``CPU_BUDGET``); 512 is ComfyUI's first tile, which covers a 512x512 image whole. ``--write`` appends the table to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status(field: str) -> int:
    """A VmRSS/VmHWM line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(path: str, tile: str, size: int, threads: int) -> None:
    """Load, reset the peak counter, upscale once, print the numbers as JSON."""
    import torch

    from comfykit.engine.models.upscale import load_upscale_model, pick_tile, upscale_image

    if threads:
        torch.set_num_threads(threads)
    model = load_upscale_model(path)
    image = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0))
    chosen = pick_tile(model, size, size) if tile == "auto" else int(tile)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now
    base = _status("VmRSS")
    start = time.perf_counter()
    out = upscale_image(model, image, tile=chosen)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    print(json.dumps({"tile": chosen, "asked": tile, "base": base, "peak": peak, "seconds": seconds,
                      "shape": list(out.shape), "estimate": model.estimate_memory(chosen),
                      "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", default="auto,512", help="comma-separated: auto or pixel sizes")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--write", action="store_true", help="append the table to docs/benchmarks.md")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.size, args.threads)
        return

    from comfykit import demo

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = demo.make_upscale_model(Path(tmp) / "4x-rrdb-64x23.pth", scale=4, layout="old", features=64,
                                       blocks=23, growth=32)
        weights = path.stat().st_size
        for tile in args.tiles.split(","):
            proc = subprocess.run([sys.executable, __file__, "--child", str(path), tile, "--size", str(args.size),
                                   "--threads", str(args.threads)], capture_output=True, text=True, check=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    mb = 1 << 20
    lines = ["| tile asked | tile used | peak above model + input, MB | estimate, MB | seconds |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['asked']} | {r['tile']} | {(r['peak'] - r['base']) / mb:.0f} | "
                     f"{r['estimate'] / mb:.0f} | {r['seconds']:.1f} |")
    title = (f"Upscale {args.size}x{args.size} -> {4 * args.size}x{4 * args.size}, 4x RRDBNet 64 features x 23 "
             f"blocks ({weights / mb:.0f} MB of weights), CPU, {rows[0]['threads']} threads, "
             f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}:")
    table = "\n".join([title, "", *lines])
    print(table)
    if args.write:
        with open(ROOT / "docs" / "benchmarks.md", "a") as fh:
            fh.write("\n## Upscale models (bench/bench_upscale.py)\n\n" + table + "\n")


if __name__ == "__main__":
    main()
