"""The ``comfykit`` command: ``generate`` an image, ``run`` a workflow file, ``serve`` ComfyUI's API.

    comfykit generate "a beautiful sunset" --steps 20 --seed 5 -o sunset.png
    comfykit generate "a cat" --demo                    # tiny random local model, no download
    comfykit run workflow.json --set 6.text="a cat" --set 3.seed=5 -o out/
    comfykit serve --port 8188
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import ComfykitError

NO_CHECKPOINT = 2  # exit code when there is nothing to generate with


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``comfykit`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":  # every flag belongs to the server's own parser
        from .server import main as serve_main

        return int(serve_main(argv[1:]) or 0)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ComfykitError, FileNotFoundError, KeyError, ValueError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfykit", description="ComfyUI-style image generation from Python.")
    sub = parser.add_subparsers(dest="command")

    gen = sub.add_parser("generate", help="text-to-image with the standard SD1.5 template")
    gen.add_argument("prompt", help="what the image should show")
    gen.add_argument("--negative", default=None, help="what the image should avoid")
    gen.add_argument("--ckpt", default=None, help="checkpoint file path, or a name in MODELS/checkpoints")
    gen.add_argument("--steps", type=int, default=None)
    gen.add_argument("--seed", type=int, default=None, help="noise seed (random if omitted)")
    gen.add_argument("--cfg", type=float, default=None)
    gen.add_argument("--sampler", default=None, help="sampler name, e.g. euler, dpmpp_2m")
    gen.add_argument("--scheduler", default=None, help="scheduler name, e.g. normal, karras")
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--demo", action="store_true",
                     help="use (and create if needed) a tiny random demo model; unless set, 256x256 and 10 steps")
    gen.add_argument("-o", "--output", default=None, help="PNG file to write (default: the output folder)")
    _engine_flags(gen)
    gen.set_defaults(func=_generate)

    run = sub.add_parser("run", help="run a workflow JSON file (API or UI format)")
    run.add_argument("workflow", help="workflow .json file")
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input; VALUE is parsed as JSON when possible (repeatable)")
    run.add_argument("-o", "--output", default=None, help="output folder for saved images")
    _engine_flags(run)
    run.set_defaults(func=_run)

    sub.add_parser("serve", help="ComfyUI-compatible HTTP/WS server (flags: comfykit serve --help)")
    return parser


def _engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", default=None, help="models folder (default: $COMFYKIT_MODELS or ./models)")
    p.add_argument("--input-dir", default=None, help="input folder for LoadImage (default: ./input)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _engine(args: argparse.Namespace, models_dir: Any = None, output_dir: Any = None) -> Any:
    from .engine import Engine

    return Engine(models_dir if models_dir is not None else args.models_dir, output_dir=output_dir,
                  input_dir=args.input_dir, device=args.device, previews="none")


def _progress(enabled: bool) -> tuple[Any, Any]:
    """An ``on_event`` callback driving a tqdm bar per sampler node, and a closer."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    state: dict[str, Any] = {"bar": None, "node": None}

    def on_event(event: Any) -> None:
        if event.type != "progress":
            return
        data = event.data
        if state["bar"] is None or state["node"] != data["node"] or state["bar"].total != data["max"]:
            close()
            state["bar"] = tqdm(total=data["max"], desc=f"node {data['node']}", unit="step", file=sys.stderr)
            state["node"] = data["node"]
        state["bar"].update(data["value"] - state["bar"].n)
        if data["value"] >= data["max"]:
            close()

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None

    return on_event, close


def _execute(engine: Any, prompt: dict[str, Any], args: argparse.Namespace) -> Any:
    on_event, close = _progress(not args.no_progress)
    try:
        return engine.run(prompt, on_event=on_event)
    finally:
        close()
        engine.shutdown()


def _checkpoint(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """(models dir, checkpoint name) to generate with, or (dir, None) when there is none."""
    from .engine.folders import Folders

    folders = Folders(args.models_dir)
    if args.demo:
        from . import demo

        return folders.models, demo.ensure_demo_checkpoint(folders.models)
    if args.ckpt:
        path = Path(args.ckpt).expanduser()
        if path.is_file():
            try:
                return folders.models, path.resolve().relative_to(folders.folder("checkpoints")).as_posix()
            except ValueError:  # a file elsewhere: serve it from a private models folder
                tmp = Path(tempfile.mkdtemp(prefix="comfykit-models-"))
                (tmp / "checkpoints").mkdir()
                link = tmp / "checkpoints" / path.name
                try:
                    link.symlink_to(path.resolve())
                except OSError:
                    shutil.copy2(path, link)
                return tmp, path.name
        names = folders.list_files("checkpoints")
        if args.ckpt in names:
            return folders.models, args.ckpt
        matches = [n for n in names if Path(n).name == args.ckpt or Path(n).stem == args.ckpt]
        if matches:
            return folders.models, matches[0]
        raise FileNotFoundError(f"checkpoint {args.ckpt!r} is neither a file nor in "
                                f"{folders.folder('checkpoints')} (found: {names or 'nothing'})")
    names = folders.list_files("checkpoints")
    return folders.models, (names[0] if names else None)


def _generate(args: argparse.Namespace) -> int:
    from . import templates

    models_dir, ckpt = _checkpoint(args)
    if ckpt is None:
        print(f"No checkpoint found in {Path(models_dir) / 'checkpoints'}.\n"
              "Put a .safetensors checkpoint there, pass --ckpt FILE or --models-dir DIR, or run with --demo to "
              "try a tiny random demo model (no download; its picture is noise).", file=sys.stderr)
        return NO_CHECKPOINT
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    if args.demo:  # the demo picture is noise anyway: keep the CPU run short unless asked otherwise
        args.width, args.height = args.width or 256, args.height or 256
        args.steps = args.steps or 10
    prompt = templates.fill("sd15_txt2img", prompt=args.prompt, negative=args.negative, seed=seed,
                            steps=args.steps, cfg=args.cfg, width=args.width, height=args.height,
                            ckpt_name=ckpt, sampler_name=args.sampler, scheduler=args.scheduler)
    out_dir = tempfile.mkdtemp(prefix="comfykit-out-") if args.output else None
    engine = _engine(args, models_dir, out_dir)
    print(f"generating with {ckpt}, seed {seed}", file=sys.stderr)
    result = _execute(engine, prompt, args)
    files = list(result.files)
    if args.output:
        target = Path(args.output)
        target.parent.mkdir(parents=True, exist_ok=True)
        written = []
        for i, src in enumerate(files):
            dst = target if i == 0 else target.with_name(f"{target.stem}_{i + 1}{target.suffix or '.png'}")
            shutil.copyfile(src, dst)
            written.append(dst)
        shutil.rmtree(out_dir, ignore_errors=True)
        files = written
    for path in files:
        print(path)
    return 0


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _apply_sets(prompt: dict[str, Any], sets: list[str]) -> None:
    for item in sets:
        target, sep, value = item.partition("=")
        node_id, dot, name = target.partition(".")
        if not sep or not dot or not node_id or not name:
            raise ValueError(f"--set {item!r}: write NODE.INPUT=VALUE, e.g. --set 6.text=\"a cat\" or --set 3.seed=5")
        if node_id not in prompt:
            raise KeyError(f"--set {item!r}: no node {node_id!r} in the workflow (nodes: {', '.join(prompt)})")
        inputs = prompt[node_id].setdefault("inputs", {})
        if name not in inputs:
            known = ", ".join(k for k, v in inputs.items() if not isinstance(v, list)) or "none"
            raise KeyError(f"--set {item!r}: node {node_id} ({prompt[node_id].get('class_type')}) has no input "
                           f"{name!r} (widget inputs: {known})")
        inputs[name] = _parse_value(value)


def _run(args: argparse.Namespace) -> int:
    path = Path(args.workflow)
    if not path.is_file():
        raise FileNotFoundError(f"workflow file {path} does not exist")
    engine = _engine(args, output_dir=args.output)
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        from .graph import Workflow

        prompt = Workflow.load(data).to_api()  # file names are checked by the engine, after --set
    elif isinstance(data, dict) and isinstance(data.get("prompt"), dict):  # a POST /prompt body
        prompt = data["prompt"]
    else:
        prompt = data
    _apply_sets(prompt, args.set)
    result = _execute(engine, prompt, args)
    for path_out in result.files:
        print(path_out)
    if not result.files:
        print(json.dumps(result.outputs, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


