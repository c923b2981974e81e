"""comfykit's SD1.5-size UNet against diffusers' UNet2DConditionModel on the same weights: one denoising call each.

    python bench/bench_cpu_vs_diffusers.py [--size 512] [--repeat 3]

Where no GPU is lent, this is the speed comparison with diffusers that can be made: the network both pipelines
spend their time in, on the same random weights of the real size (built as ``bench/bench_gpu.py`` builds them),
batch 2 (cond + uncond, as CFG runs it), fp32, best of ``--repeat`` after a warm-up, both in this process. The
ratio is diffusers' seconds / comfykit's (at least 1.0: comfykit as fast or faster).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import torch
    from bench_gpu import build

    device = torch.device("cpu")
    model, theirs, (text, _) = build("sd15", device, fp8=False)
    side = args.size // 8
    x = torch.randn(2, 4, side, side)
    t = torch.tensor([500.0, 500.0])
    context = text.expand(2, -1, -1)
    net = model.network

    def best(fn) -> float:
        with torch.no_grad():
            fn()
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
        return min(times)

    with torch.no_grad():
        diff = (net(x, t, context) - theirs(x, t, encoder_hidden_states=context).sample).abs().max()
    ours = best(lambda: net(x, t, context))
    diffusers_s = best(lambda: theirs(x, t, encoder_hidden_states=context))
    print("| case | image | batch | comfykit (s) | diffusers (s) | ratio | max diff | torch threads |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    print(f"| SD1.5 UNet, fp32 CPU | {args.size}² | 2 | {ours:.2f} | {diffusers_s:.2f} | "
          f"**{diffusers_s / ours:.2f}** | {diff:.1e} | {torch.get_num_threads()} |")


if __name__ == "__main__":
    main()
