"""Engine overhead: the embedded Engine against the same models called directly, in one process.

    python bench/bench_engine.py [--steps 8] [--size 128] [--repeat 3] [--device cpu] [--ckpt FILE]

Three scenarios, each timed for the engine (the default text-to-image graph ending in PreviewImage) and for a
hand-written baseline (text encode, sampling loop, VAE decode, PNG write; no graph engine):

* cold: first run, model load included;
* prompt changed: only the positive prompt differs from the previous run;
* identical re-run: same prompt again (the engine's cache answers, the baseline recomputes).

The ratio engine / direct should stay <= 1.03 for the first two. A table goes to stdout and is appended to
docs/benchmarks.md with the date and machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from comfykit import demo  # noqa: E402
from comfykit.engine import Engine  # noqa: E402
from comfykit.engine.images import tensor_to_pil  # noqa: E402
from comfykit.engine.models import ModelManager  # noqa: E402
from comfykit.engine.sampling.ksampler import common_ksampler  # noqa: E402

NEGATIVE = "blurry, low quality"


def graph(ckpt: str, text: str, args: argparse.Namespace) -> dict:
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": args.steps, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": args.size, "height": args.size,
                                                           "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


class Direct:
    """The same work without the graph engine: the baseline a user would write by hand."""

    def __init__(self, path: Path, device: torch.device, out: Path):
        self.path, self.device, self.out = path, device, out
        self.manager = ModelManager(device=device)
        self.negative = None
        self.count = 0

    def run(self, text: str, args: argparse.Namespace, encode_negative: bool) -> object:
        model, clip, vae = self.manager.load_checkpoint(self.path)
        with torch.inference_mode():
            pos = clip.encode(text)
            if encode_negative or self.negative is None:
                self.negative = clip.encode(NEGATIVE)
            latent = {"samples": torch.zeros([1, 4, args.size // 8, args.size // 8])}
            out = common_ksampler(model, 7, args.steps, 7.0, "euler", "normal",
                                  [[pos[0], {"pooled_output": pos[1]}]],
                                  [[self.negative[0], {"pooled_output": self.negative[1]}]], latent, denoise=1.0,
                                  callback=lambda *a: None)
            images = vae.decode(out["samples"])
        image = tensor_to_pil(images)[0]
        self.count += 1
        image.save(self.out / f"direct_{self.count:05}_.png", compress_level=1)
        return image

    def unload(self) -> None:
        self.manager.unload_all()


def timed(fn) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--ckpt", default=None, help="a real checkpoint file (default: the tiny demo model)")
    parser.add_argument("--no-append", action="store_true", help="do not append to docs/benchmarks.md")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    models = work / "models"
    if args.ckpt:
        (models / "checkpoints").mkdir(parents=True)
        (models / "checkpoints" / Path(args.ckpt).name).symlink_to(Path(args.ckpt).resolve())
        ckpt = Path(args.ckpt).name
    else:
        ckpt = demo.ensure_demo_checkpoint(models)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    engine = Engine(models, output_dir=work / "out", temp_dir=work / "temp", input_dir=work / "in", device=device,
                    previews="none")
    direct = Direct(models / "checkpoints" / ckpt, device, work)

    def engine_run(text: str, pid: str):
        return engine.execute(graph(ckpt, text, args), prompt_id=pid)

    scenarios = ("cold", "prompt changed", "identical re-run")
    rows: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in scenarios}
    same = True
    inside: list[tuple[float, float]] = []  # (execute time, time inside node functions) of "prompt changed"
    for rep in range(args.repeat):
        text_a, text_b = f"a red fox {rep}", f"a blue bird {rep}"
        # scenario by scenario, alternating who goes first, so load spikes on a shared machine hit both sides
        for i, name in enumerate(scenarios):
            text = text_a if name == "cold" else text_b
            first = "engine" if (rep + i) % 2 == 0 else "direct"
            for who in (first, "direct" if first == "engine" else "engine"):
                if who == "engine":
                    if name == "cold":
                        engine.free()
                    pid = f"{name}-{rep}"
                    t, r = timed(lambda text=text, pid=pid: engine_run(text, pid))
                    assert r.ok, r.error
                    assert name != "identical re-run" or r.executed == []
                    if name == "prompt changed":
                        engine_image = r.image
                        inside.append((t, sum(r.timings.values())))
                    rows[name][0].append(t)
                else:
                    if name == "cold":
                        direct.unload()
                    t, image = timed(lambda text=text, name=name: direct.run(text, args, name == "cold"))
                    if name == "prompt changed":
                        direct_image = image
                    rows[name][1].append(t)
        same = same and engine_image.tobytes() == direct_image.tobytes()

    lines = ["| scenario | engine best (s) | direct best (s) | engine / direct (best) | engine / direct (median) |",
             "|---|---:|---:|---:|---:|"]
    for name, (eng, dir_) in rows.items():
        e, d = min(eng), min(dir_)
        med = statistics.median(eng) / statistics.median(dir_)
        lines.append(f"| {name} | {e:.3f} | {d:.3f} | {e / d:.3f} | {med:.3f} |")
    outside = min(total - nodes for total, nodes in inside)
    ratio = min(total / nodes for total, nodes in inside)
    lines.append(f"| prompt changed: engine bookkeeping outside nodes | {outside:.4f} | | {ratio:.4f} "
                 "(execute / time inside nodes) | |")
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {device}"
               + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    try:
        import os

        load = f"; load average {os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        load = ""
    header = (f"## Engine vs direct model calls (bench/bench_engine.py), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{machine}, Python {platform.python_version()}, torch {torch.__version__}\n\n"
              f"{'demo checkpoint' if not args.ckpt else ckpt}, {args.size}x{args.size}, {args.steps} euler steps, "
              f"best and median of {args.repeat}{load}. Same image from both: {same}. The identical re-run is answered from "
              "the engine's cache; the baseline recomputes. On a busy machine the wall-clock ratios are noisy; the "
              "bookkeeping row (validation, cache keys, events; measured inside one run) is the robust overhead "
              "figure.\n")
    table = "\n".join(lines)
    print(header)
    print(table)
    if not args.no_append:
        doc = ROOT / "docs" / "benchmarks.md"
        text = doc.read_text() if doc.is_file() else "# comfykit benchmarks\n"
        doc.write_text(text.rstrip("\n") + "\n\n" + header + "\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
