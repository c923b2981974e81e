"""Engine plumbing per run: validations, folder scans, bookkeeping time and the size of a pickled Result.

    python bench/bench_plumbing.py [--repeat 5] [--steps 20] [--size 64] [--no-append] [--label after]

Counts, per ``Engine.run`` (a built Workflow, a loaded Workflow, an API dict) and per ``POST /prompt`` on the
HTTP server, how often ``validate_prompt`` ran and how many model/input folder listings touched the disk
(``os.walk``/``os.listdir`` under those folders). Then the engine's bookkeeping per run (wall time minus the time
inside node functions; model-free graph, so it is mostly validation, cache keys and events), and the pickled size
of a 64x64, 20-step Result with previews on (the engine's default latent2rgb previews). Works on older
comfykit checkouts too (options they lack are skipped), so before/after numbers come from the same script.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import comfykit as ck  # noqa: E402
from comfykit import demo  # noqa: E402
from comfykit.engine import Engine  # noqa: E402


class Counters:
    """Wraps validate_prompt wherever comfykit imported it, and os.walk/os.listdir of watched folders, counting calls.

    A folder scan is one ``os.walk`` of a model folder tree or one ``os.listdir`` (``Path.iterdir``) of a watched
    folder; the engine walks only the model folders that exist (here checkpoints) and lists input.
    """

    def __init__(self, watched: list[Path]):
        import comfykit.graph.validate as validate_module

        self.watched = [str(p) for p in watched]
        self.validations = 0
        self.scans = 0
        original = validate_module.validate_prompt

        def counted_validate(*args, **kwargs):
            self.validations += 1
            return original(*args, **kwargs)

        # every module that did `from .validate import validate_prompt` holds its own reference
        for name, module in list(sys.modules.items()):
            if name.startswith("comfykit") and getattr(module, "validate_prompt", None) is original:
                module.validate_prompt = counted_validate
        walk, listdir = os.walk, os.listdir

        def watched_path(path) -> bool:
            text = os.fspath(path) if not isinstance(path, int) else ""
            return any(text == w or text.startswith(w + os.sep) for w in self.watched)

        def counted_walk(top, *args, **kwargs):
            if watched_path(top):
                self.scans += 1
            return walk(top, *args, **kwargs)

        def counted_listdir(path="."):
            if watched_path(path):
                self.scans += 1
            return listdir(path)

        os.walk, os.listdir = counted_walk, counted_listdir

    def take(self) -> tuple[int, int]:
        got = (self.validations, self.scans)
        self.validations = self.scans = 0
        return got


def t2i(ckpt: str, text: str, steps: int, size: int) -> dict:
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def scale(width: int) -> dict:
    """Model-free: LoadImage -> ImageScale (a new width each time, so it runs) -> PreviewImage."""
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "dot.png"}},
            "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                         "width": width, "height": 8, "crop": "disabled"}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}


def built_scale(schema, width: int):
    wf = ck.Workflow(schema)
    image = wf.LoadImage(image="dot.png")
    scaled = wf.ImageScale(image=image.IMAGE, upscale_method="nearest-exact", width=width, height=8,
                           crop="disabled")
    wf.PreviewImage(images=scaled.IMAGE)
    return wf


def run_kwargs(engine: Engine, **wanted) -> dict:
    """The options of ``wanted`` this checkout's Engine.submit takes."""
    import inspect

    params = inspect.signature(engine.submit).parameters
    return {k: v for k, v in wanted.items() if k in params}


def cases(engine: Engine, start: int) -> list[tuple[str, object, object]]:
    """(label, make input, run it): only the run is counted and timed."""
    width = iter(range(start, 16000))
    schema = ck.Schema(engine.object_info())
    return [
        ("Engine.execute(API dict)", lambda: scale(next(width)),
         lambda p: engine.execute(p, prompt_id=str(uuid.uuid4()))),
        ("Engine.run(API dict)", lambda: scale(next(width)), engine.run),
        ("Engine.run(built Workflow)", lambda: built_scale(schema, next(width)), engine.run),
        ("Engine.run(Workflow.from_api(...))", lambda: ck.Workflow.from_api(scale(next(width))), engine.run),
    ]


def counts(args, engine, counters) -> list[str]:
    rows = []
    for label, make, go in cases(engine, 16):
        go(make())  # warm: the first listing of each folder is a real scan
        counters.take()
        per = []
        for _ in range(args.repeat):
            item = make()
            counters.take()
            go(item)
            per.append(counters.take())
        rows.append((label, per))

    import requests

    from comfykit.server import serve

    server = serve(engine, port=0)
    try:
        session = requests.Session()
        width = iter(range(5000, 8000))

        def post():
            pid = session.post(server.url + "/prompt", json={"prompt": scale(next(width))}, timeout=60).json()
            pid = pid["prompt_id"]
            while not session.get(f"{server.url}/history/{pid}", timeout=60).json():
                time.sleep(0.01)

        post()
        counters.take()
        rows.append(("POST /prompt (server, until in history)",
                     [post() or counters.take() for _ in range(args.repeat)]))
    finally:
        server.stop()
    lines = ["| path | validate_prompt calls per run | folder scans per run |", "|---|---:|---:|"]
    for label, per in rows:
        v = sorted({p[0] for p in per})
        s = sorted({p[1] for p in per})
        lines.append(f"| {label} | {'/'.join(map(str, v))} | {'/'.join(map(str, s))} |")
    return lines


def bookkeeping(args, engine) -> list[str]:
    lines = ["| path (model-free 3-node graph) | median ms per run | of which inside nodes | bookkeeping ms, best | "
             "bookkeeping ms, median |", "|---|---:|---:|---:|---:|"]
    for label, make, go in cases(engine, 8000):
        walls, inside = [], []
        for _ in range(5):
            go(make())
        for _ in range(args.n):
            item = make()
            start = time.perf_counter()
            result = go(item)
            walls.append(time.perf_counter() - start)
            inside.append(sum(result.timings.values()))
        wall, node = statistics.median(walls) * 1000, statistics.median(inside) * 1000
        over = [(w - i) * 1000 for w, i in zip(walls, inside)]
        lines.append(f"| {label} | {wall:.2f} | {node:.2f} | {min(over):.2f} | {statistics.median(over):.2f} |")
    return lines


def pickled(args, engine, ckpt) -> list[str]:
    lines = [f"| {args.size}x{args.size}, {args.steps} steps, previews latent2rgb | pickled Result | "
             "previews kept | KSampler s |", "|---|---:|---:|---:|"]
    seen: list = []
    cases = [("run(wf)", {}),
             ("run(wf, on_event=listener)", {"on_event": seen.append}),
             ("run(wf, on_event=listener, keep_previews=True)", {"on_event": seen.append, "keep_previews": True})]
    for i, (label, opts) in enumerate(cases):
        kwargs = run_kwargs(engine, **opts)
        if len(kwargs) != len(opts):
            lines.append(f"| {label} | (option not in this version) | | |")
            continue
        result = engine.run(t2i(ckpt, f"a red fox {i} {time.time()}", args.steps, args.size), **kwargs)
        size = len(pickle.dumps(result))
        kept = sum(1 for e in result.events if e.preview is not None)
        lines.append(f"| {label} | {size / 1024:.1f} KB | {kept} | {result.timings.get('3', 0):.3f} |")
    sizes = sorted({e.preview.size for e in seen if e.preview is not None})
    lines.append(f"\nPreview sizes a listener received: {sizes}.")
    return lines


def preview_cost(args) -> list[str]:
    """Per step, on the sampling thread: the old hook's to_image (PIL, fitted to 512) against snapshot()."""
    from comfykit.engine.sampling import latent_formats
    from comfykit.engine.sampling.preview import Previewer

    previewer = Previewer(latent_formats.SD15, preview_size=512)
    lines = ["| image (latent) | to_image on the sampling thread, ms | snapshot on the sampling thread, ms | "
             "reader makes the PIL image, ms |", "|---|---:|---:|---:|"]
    if not hasattr(previewer, "snapshot"):
        return []

    def best(fn, *fn_args, n=30) -> float:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn(*fn_args)
            times.append(time.perf_counter() - start)
        return min(times) * 1000

    def read(snap) -> None:
        type(snap)(snap.data, snap.size, snap.target).image()  # a fresh one: the image is made once per object

    for side in (64, 512, 1024):
        x0 = torch.randn(1, 4, side // 8, side // 8)
        old = best(previewer.to_image, x0)
        new = best(previewer.snapshot, x0)
        made = best(read, previewer.snapshot(x0))
        lines.append(f"| {side}x{side} ({side // 8}x{side // 8}) | {old:.3f} | {new:.3f} | {made:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per count row")
    parser.add_argument("--n", type=int, default=40, help="runs per bookkeeping row")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--label", default="", help="a word for the heading, such as 'before' or 'after'")
    parser.add_argument("--no-append", action="store_true", help="do not append to docs/benchmarks.md")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-plumbing-"))
    models = work / "models"
    ckpt = demo.ensure_demo_checkpoint(models)
    (work / "in").mkdir()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(work / "in" / "dot.png")
    engine = Engine(models, output_dir=work / "out", temp_dir=work / "temp", input_dir=work / "in", device="cpu",
                    previews="latent2rgb")
    engine.run(t2i(ckpt, "warm up", 2, args.size))  # load the model once
    time.sleep(2.2)  # folders changed in the last 2 s are listed again each time (mtime granularity)
    counters = Counters([models, work / "in"])

    sections = [counts(args, engine, counters), bookkeeping(args, engine), pickled(args, engine, ckpt)]
    cost = preview_cost(args)
    if cost:
        sections.append(cost)
    engine.shutdown()
    try:
        load = f", load average {os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        load = ""
    head = (f"## Engine plumbing (bench/bench_plumbing.py){' - ' + args.label if args.label else ''}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
            f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU, {torch.get_num_threads()} torch threads, Python "
            f"{platform.python_version()}, torch {torch.__version__}{load}. Counts per run after one warm-up run; "
            f"bookkeeping = wall time minus time inside node functions, best and median of {args.n} runs (the best is the robust figure on a shared machine).\n")
    text = head + "\n" + "\n\n".join("\n".join(s) for s in sections) + "\n"
    print(text)
    if not args.no_append:
        doc = ROOT / "docs" / "benchmarks.md"
        doc.write_text(doc.read_text().rstrip("\n") + "\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
