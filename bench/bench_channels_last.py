"""Channels-last against the default layout for an SD1.5-size UNet forward, on the CPU (or --device cuda).

    python bench/bench_channels_last.py [--device cpu] [--size 512] [--repeat 3]

Random weights of the real SD1.5 UNet shape; one forward at batch 1, best of ``--repeat``, both layouts in the same
process. Prints a table row with the ratio (above 1: channels-last is faster) and the largest output difference.
``Engine(channels_last=None)`` keeps channels-last off where this shows no gain.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (the latent is size / 8)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import torch

    from comfykit.engine.compile import to_channels_last
    from comfykit.engine.models.unet import UNetConfig, UNetModel

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    net = UNetModel(UNetConfig()).eval().to(device, dtype)  # the defaults are SD1.5's
    side = args.size // 8
    x = torch.randn(1, 4, side, side, device=device, dtype=dtype)
    t = torch.tensor([500.0], device=device)
    context = torch.randn(1, 77, 768, device=device, dtype=dtype)

    def best() -> tuple[float, torch.Tensor]:
        times = []
        for _ in range(args.repeat):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.no_grad():
                out = net(x, t, context)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return min(times), out

    default, ref = best()
    to_channels_last(net)
    last, out = best()
    print("| device | dtype | image | default (s) | channels-last (s) | ratio | max diff |")
    print("|---|---|---|---:|---:|---:|---:|")
    print(f"| {args.device} ({torch.get_num_threads()} threads) | {str(dtype).removeprefix('torch.')} | "
          f"{args.size}² | {default:.2f} | {last:.2f} | {default / last:.2f} | {(out - ref).abs().max():.1e} |")


if __name__ == "__main__":
    main()
