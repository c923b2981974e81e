"""bench/bench_gpu.py --tiny: every code path of the GPU benchmark, at toy size on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # three families, their diffusers pipelines, dynamo tracing and a child process each: minutes
def test_bench_gpu_tiny_runs_every_case_and_variant():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--tiny", "--no-append",
                          "--compile-backend", "eager"], capture_output=True, text=True, env=env, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["case"] for r in rows] == ["sd15", "sdxl", "flux"]
    for r in rows:
        assert r["ours_its"] > 0 and r["diffusers_its"] > 0 and r["compiled_its"] > 0
        assert r["compile_failed"] == {}
        assert r["t4_placement"] == [f"DiffusionModel({r['case']}) (partial)"]  # the budget made it stream
    assert all("cl_its" in r for r in rows[:2])
    table = out.stdout[out.stdout.index("| case |"):].splitlines()
    assert len(table) == 2 + 3 and "failed" not in "\n".join(table)
