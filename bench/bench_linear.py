"""Graph algorithms on huge prompts: validation, resource limits and cache keys must stay linear.

    python bench/bench_linear.py [--nodes 100000]

Prompts: a chain of N ImageScale nodes (LoadImage -> ImageScale x N -> PreviewImage), and N SaveImage outputs on
one LoadImage validated with all of them as partial execution targets (what the server's worker passes). Each
step is timed at N/10 and at N; the ratio t(N) / t(N/10) is about 10 for linear work and about 100 for
quadratic work. The target is under 2 s for N = 100,000 (validation plus cache keys). Times are CPU seconds
of this process, best of three, so that other work on a shared machine does not count. Torch is not needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comfykit.engine.cache import signatures  # noqa: E402  (pure Python: no torch import)
from comfykit.engine.executor import Executor  # noqa: E402
from comfykit.graph import builtin, validate_prompt  # noqa: E402
from comfykit.graph.limits import Limits, check_limits  # noqa: E402
from comfykit.nodes import NODE_CLASS_MAPPINGS  # noqa: E402


def chain(n: int) -> dict:
    prompt = {"0": {"class_type": "LoadImage", "inputs": {"image": "dot.png"}}}
    prev = ["0", 0]
    for i in range(1, n + 1):
        prompt[str(i)] = {"class_type": "ImageScale", "inputs": {"image": prev, "upscale_method": "nearest-exact",
                                                                 "width": 64, "height": 64, "crop": "disabled"}}
        prev = [str(i), 0]
    prompt[str(n + 1)] = {"class_type": "PreviewImage", "inputs": {"images": prev}}
    return prompt


def fan(n: int) -> dict:
    prompt = {"0": {"class_type": "LoadImage", "inputs": {"image": "dot.png"}}}
    for i in range(1, n + 1):
        prompt[str(i)] = {"class_type": "SaveImage", "inputs": {"images": ["0", 0], "filename_prefix": "x"}}
    return prompt


def timed(step, prompt, repeat: int = 3) -> float:
    """Best of ``repeat`` runs, in CPU seconds of this process: other work on a shared machine does not count."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        step(prompt)
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    args = parser.parse_args()
    schema = builtin.object_info({"input": ["dot.png"]})
    executor = Executor(NODE_CLASS_MAPPINGS)
    limits = Limits(max_pixels=4096 * 4096, max_batch=64, max_prompt_nodes=None, max_text_tokens=4096)
    rows = []
    for name, make, step in [
        ("chain: validate_prompt", chain, lambda p: validate_prompt(p, schema)),
        ("chain: check_limits", chain, lambda p: check_limits(p, limits)),
        ("chain: cache signatures", chain, lambda p: signatures(p, lambda n: None, lambda n: False)),
        ("chain: the engine's cache keys (its IS_CHANGED and unique checks)", chain,
         lambda p: signatures(p, lambda n: executor._changed(p, n), lambda n: executor._unique(p, n))),
        ("fan: validate with N partial targets", fan,
         lambda p: validate_prompt(p, schema, partial_targets=[k for k in p if k != "0"])),
    ]:
        small, big = make(args.nodes // 10), make(args.nodes)
        t_small, t_big = timed(step, small), timed(step, big)
        rows.append((name, t_small, t_big, t_big / max(t_small, 1e-9)))
    print(f"| step | N/10 = {args.nodes // 10} (CPU s) | N = {args.nodes} (CPU s) | ratio |")
    print("|---|---|---|---|")
    for name, t_small, t_big, ratio in rows:
        print(f"| {name} | {t_small:.3f} | {t_big:.3f} | {ratio:.1f} |")


if __name__ == "__main__":
    main()
