"""The ``comfykit`` command: ``generate`` an image, ``run`` a workflow file, ``serve`` ComfyUI's API.

    comfykit generate "a beautiful sunset" --steps 20 --seed 5 -o sunset.png
    comfykit generate "a cat" --demo                    # tiny random local model, no download
    comfykit run workflow.json --set 6.text="a cat" --set 3.seed=5 -o out/
    comfykit run workflows/sd15_txt2img.json --demo      # every checkpoint loader on the demo model
    comfykit serve --port 8188                           # add --demo to serve the demo model too
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import ComfykitError

NO_CHECKPOINT = 2  # exit code when there is nothing to generate with
#: --model shortcuts (comfykit.hub): single checkpoints and split-file bundles
MODEL_CHOICES = ("sd15", "sdxl", "flux-schnell", "flux-schnell-split", "flux-dev", "sd3.5-large", "sd3.5-medium")
#: --demo --family: tiny random models of each family
DEMO_FAMILIES = ("sd15", "flux", "flux-dev", "sd3")
#: family -> (template, steps, cfg, size): the settings ComfyUI's examples use for it
FAMILY_DEFAULTS = {"sd1": ("sd15_txt2img", 20, 8.0, 512), "sd2": ("sd15_txt2img", 20, 7.0, 768),
                   "sdxl": ("sdxl_txt2img", 20, 7.0, 1024), "flux": ("flux_schnell_txt2img", 4, 1.0, 1024),
                   "flux-dev": ("flux_schnell_txt2img", 20, 1.0, 1024), "sd3": ("sd35_txt2img", 20, 4.0, 1024),
                   "flux-split": ("flux_dev_txt2img", 20, 1.0, 1024)}


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
    from .server.cli import missing_extra

    hint = missing_extra(f"comfykit {args.command}", {"torch": "engine", "safetensors": "engine"})
    if hint:
        print(f"error: {hint}", file=sys.stderr)
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
    from . import __version__
    from .server.cli import DefaultsHelp

    parser = argparse.ArgumentParser(prog="comfykit", description="ComfyUI-style image generation from Python.",
                                     formatter_class=DefaultsHelp)
    parser.add_argument("--version", action="version", version=f"comfykit {__version__}")
    sub = parser.add_subparsers(dest="command")

    gen = sub.add_parser("generate", help="text-to-image with the standard SD1.5 template",
                         formatter_class=DefaultsHelp)
    gen.add_argument("prompt", help="what the image should show")
    gen.add_argument("--negative", default=None, help="what the image should avoid (default: the template's)")
    gen.add_argument("--ckpt", default=None, help="checkpoint file path, or a name in MODELS/checkpoints "
                                                  "(default: the first one there)")
    gen.add_argument("--steps", type=int, default=None, help="sampler steps (default: 20; 10 with --demo)")
    gen.add_argument("--seed", type=int, default=None, help="noise seed (default: random)")
    gen.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: 8.0)")
    gen.add_argument("--sampler", default=None, help="sampler name, e.g. euler, dpmpp_2m (default: euler)")
    gen.add_argument("--scheduler", default=None, help="scheduler name, e.g. normal, karras (default: normal)")
    gen.add_argument("--width", type=int, default=None, help="image width (default: 512; 256 with --demo)")
    gen.add_argument("--height", type=int, default=None, help="image height (default: 512; 256 with --demo)")
    gen.add_argument("--model", default=None,
                     help="a hub shortcut to download (if missing) and use: " + ", ".join(MODEL_CHOICES) +
                          "; the workflow follows the model's family (FLUX.1: 4 steps at cfg 1 for schnell)")
    gen.add_argument("--demo", action="store_true",
                     help="use (and create if needed) a tiny random demo model: no download, the picture is noise")
    gen.add_argument("--family", default="sd15", choices=DEMO_FAMILIES,
                     help="with --demo: the demo model's family")
    gen.add_argument("-o", "--output", default=None,
                     help="image file to write: .png, .jpg or .webp (default: a PNG in the output folder)")
    _engine_flags(gen)
    gen.set_defaults(func=_generate)

    run = sub.add_parser("run", help="run a workflow JSON file (API or UI format)", formatter_class=DefaultsHelp)
    run.add_argument("workflow", help="workflow .json file")
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input; VALUE is parsed as JSON when possible (repeatable)")
    run.add_argument("--ckpt", default=None,
                     help="checkpoint for every checkpoint loader: a file path or a name in MODELS/checkpoints")
    run.add_argument("--demo", action="store_true",
                     help="run every checkpoint loader on the tiny random demo model (no download; noise)")
    run.add_argument("-o", "--output", default=None, help="output folder for saved images (default: ./output)")
    _engine_flags(run)
    run.set_defaults(func=_run)

    sub.add_parser("serve", help="ComfyUI-compatible HTTP/WS server (flags: comfykit serve --help)")
    return parser


def _engine_flags(p: argparse.ArgumentParser) -> None:
    from .server.cli import add_compile_flags

    p.add_argument("--models-dir", default=None, help="models folder (default: $COMFYKIT_MODELS or ./models)")
    p.add_argument("--input-dir", default=None, help="input folder for LoadImage (default: ./input)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    p.add_argument("--vram", default="normal", choices=("high", "normal", "low", "no", "cpu"),
                   help="GPU memory mode, as ComfyUI's --highvram/--lowvram/--novram: low streams a model that "
                        "does not fit layer by layer")
    p.add_argument("--reserve-vram", type=float, default=0.0, metavar="GB", help="GPU memory left for others")
    add_compile_flags(p)
    for flag, what in (("--dtype", "diffusion models"), ("--text-encoder-dtype", "text encoders"),
                       ("--vae-dtype", "the VAE")):
        p.add_argument(flag, default=None, choices=("fp32", "fp16", "bf16"),
                       help=f"dtype of {what} (default: the device's: fp32 on CPU, fp16/bf16 on GPUs)")
    p.add_argument("--channels-last", action="store_true", help="store convolution weights channels-last")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(:\d+)?")

#: File suffixes ``generate -o`` writes, with the Pillow format for each.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def _check_device(device: str | None) -> None:
    """Refuse a device name torch will not take, and CUDA where there is none, before loading anything."""
    if device is None:
        return
    if not _DEVICE.fullmatch(device):
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N (the N-th GPU) or mps")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch sees no CUDA GPU (torch {torch.__version__}); use "
                         "--device cpu, or install a CUDA build of torch")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: Apple's Metal backend is not available here; use --device cpu")


def _engine(args: argparse.Namespace, models_dir: Any = None, output_dir: Any = None) -> Any:
    from .engine import Engine
    from .server.cli import compile_value

    _check_device(args.device)
    return Engine(models_dir if models_dir is not None else args.models_dir, output_dir=output_dir,
                  input_dir=args.input_dir, device=args.device, previews="none", vram=args.vram,
                  reserve_vram=args.reserve_vram, compile=compile_value(args) or False,
                  channels_last=True if args.channels_last else None, dtype=args.dtype,
                  text_encoder_dtype=args.text_encoder_dtype, vae_dtype=args.vae_dtype)


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
    if sum(bool(x) for x in (args.demo, args.ckpt, getattr(args, "model", None))) > 1:
        raise ValueError("pass only one of --demo, --ckpt and --model")
    if args.demo:
        from . import demo

        family = getattr(args, "family", "sd15")
        if family == "sd15":
            return folders.models, demo.ensure_demo_checkpoint(folders.models)
        name = f"comfykit-demo-{family}.safetensors"
        if not (folders.folder("checkpoints") / name).is_file():
            demo.make_dit_checkpoint(folders.folder("checkpoints") / name, family)
        return folders.models, name
    if getattr(args, "model", None):
        from . import hub

        got = hub.download(args.model, folders.models)
        if isinstance(got, list):  # split files: the diffusion model is the one in diffusion_models/
            return folders.models, None
        return folders.models, got.name
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


def _note_demo(ckpt: str, asked: bool) -> None:
    """Say so when the checkpoint is comfykit's random demo model, unless --demo asked for it."""
    from .demo import DEMO_CHECKPOINT

    if not asked and Path(ckpt).name == DEMO_CHECKPOINT:
        print(f"note: using {ckpt}, comfykit's tiny random demo model (its pictures are noise); for real "
              "pictures put a Stable Diffusion 1.5 checkpoint into the models/checkpoints folder or pass --ckpt "
              "FILE (see the README, Models)", file=sys.stderr)


def _output_format(output: str | None) -> str | None:
    """The Pillow format for ``-o``, refusing a suffix it cannot be before anything runs."""
    if output is None:
        return None
    suffix = Path(output).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"-o {output}: cannot write a {suffix or 'suffix-less'} file; end the name in "
                         f"{', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[suffix]


def _write_image(src: Path, dst: Path, fmt: str) -> None:
    """Copy a saved PNG to ``dst``, converted when ``fmt`` is not PNG (the prompt stays in PNG files only)."""
    if fmt == "PNG":
        shutil.copyfile(src, dst)
        return
    from PIL import Image

    with Image.open(src) as img:
        img.convert("RGB").save(dst, format=fmt, quality=95)


def _generate(args: argparse.Namespace) -> int:
    from . import templates

    fmt = _output_format(args.output)
    _check_device(args.device)
    if args.model is not None and args.model not in MODEL_CHOICES:
        raise ValueError(f"--model {args.model!r} is not a shortcut; use one of {', '.join(MODEL_CHOICES)}, or "
                         "--ckpt FILE for a checkpoint you have")
    models_dir, ckpt = _checkpoint(args)
    if ckpt is None and args.model:
        return _generate_split(args, models_dir)
    if ckpt is None:
        print(f"No checkpoint found in {Path(models_dir) / 'checkpoints'}.\n"
              "Put a .safetensors checkpoint there, pass --ckpt FILE or --models-dir DIR, or run with --demo to "
              "try a tiny random demo model (no download; its picture is noise).", file=sys.stderr)
        return NO_CHECKPOINT
    _note_demo(ckpt, args.demo)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    template = _family_defaults(args, Path(models_dir) / "checkpoints" / ckpt)
    negative = args.negative
    if negative is not None and template.startswith("flux"):
        print("note: FLUX.1 runs at cfg 1, where the negative prompt is not used; --negative is ignored",
              file=sys.stderr)
        negative = None
    prompt = templates.fill(template, prompt=args.prompt, negative=negative, seed=seed,
                            steps=args.steps, cfg=args.cfg, width=args.width, height=args.height,
                            ckpt_name=ckpt, sampler_name=args.sampler, scheduler=args.scheduler)
    return _run_generate(args, prompt, models_dir, ckpt, seed, fmt)


def _family_defaults(args: argparse.Namespace, path: Path | None, family: str | None = None) -> str:
    """The template for the checkpoint's family; fills the unset --steps/--cfg/--width/--height with its values."""
    from .engine.models.checkpoint import checkpoint_family

    if family is None:
        family = checkpoint_family(path) if path is not None and path.is_file() else "sd1"
        if family == "sdxl_refiner":
            raise ValueError(f"{path.name} is an SDXL refiner: it refines an SDXL base model's latent and does not "
                             "make pictures from text on its own; generate with the SDXL base checkpoint")
        if family == "flux" and _guidance_distilled(path):
            family = "flux-dev"
    template, steps, cfg, size = FAMILY_DEFAULTS.get(family or "sd1", FAMILY_DEFAULTS["sd1"])
    if args.demo:  # the demo picture is noise anyway: keep the CPU run short unless asked otherwise
        size, steps = 256, min(steps, 10)
    # a given value, even a bad one, is kept (and refused by validation with the usual message)
    args.width = size if args.width is None else args.width
    args.height = size if args.height is None else args.height
    args.steps = steps if args.steps is None else args.steps
    args.cfg = cfg if args.cfg is None else args.cfg
    return template


def _guidance_distilled(path: Path) -> bool:
    """FLUX.1 dev and its derivatives carry a guidance embedder; schnell does not (read from the header only)."""
    import struct

    try:
        with open(path, "rb") as f:
            header = f.read(struct.unpack("<Q", f.read(8))[0]).decode("utf-8", "replace")
    except (OSError, struct.error):
        return False
    return "guidance_in." in header or "guidance_embedder." in header


def _generate_split(args: argparse.Namespace, models_dir: Path) -> int:
    """--model flux-dev / flux-schnell-split: the split-file FLUX.1 template with the downloaded files."""
    from . import hub, templates

    seed = args.seed if args.seed is not None else random.randrange(2**32)
    files = {Path(repo_file).name: folder for _, repo_file, folder in hub.BUNDLES[args.model]}
    unet = next(name for name, folder in files.items() if folder == "diffusion_models")
    wf = templates.load("flux_dev_txt2img")
    by_type = {node.class_type: node for node in wf}
    by_type["UNETLoader"].unet_name = unet
    steps = args.steps
    _family_defaults(args, None, family="flux-split")
    if "schnell" in args.model:  # schnell: no distilled guidance, no resolution shift, 4 steps
        by_type["KSampler"].model = by_type["UNETLoader"]
        args.steps = 4 if steps is None else steps
    prompt = templates.fill(wf, prompt=args.prompt, seed=seed, steps=args.steps, cfg=args.cfg, width=args.width,
                            height=args.height, sampler_name=args.sampler, scheduler=args.scheduler)
    return _run_generate(args, prompt, models_dir, unet, seed, _output_format(args.output))


def _run_generate(args: argparse.Namespace, prompt: dict[str, Any], models_dir: Any, ckpt: str, seed: int,
                  fmt: str | None) -> int:
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
            dst = target if i == 0 else target.with_name(f"{target.stem}_{i + 1}{target.suffix}")
            _write_image(Path(src), dst, fmt or "PNG")
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


def _read_workflow(path: Path) -> Any:
    """The JSON of a workflow file, with a message that says what the file should be when it is not JSON."""
    if not path.is_file():
        raise FileNotFoundError(f"workflow file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno} column {exc.colno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) \
            else ""
        raise ValueError(f"{path} is not a JSON workflow{where}; pass a file saved from ComfyUI (Workflow > "
                         "Export, or Export (API)) or one of comfykit's workflows/*.json") from None
    except RecursionError:
        raise ValueError(f"{path} nests too deeply to be a workflow") from None


def _map_checkpoints(prompt: dict[str, Any], args: argparse.Namespace) -> Path | None:
    """Point every ``ckpt_name`` at --ckpt or --demo; without them, at the only checkpoint when the named one
    is missing. Each change is noted on stderr. Returns the models folder to use (None: the default)."""
    loaders = {nid: node for nid, node in prompt.items() if isinstance(node, dict)
               and isinstance(node.get("inputs"), dict) and isinstance(node["inputs"].get("ckpt_name"), str)}
    if args.ckpt or args.demo:
        models_dir, ckpt = _checkpoint(args)
    else:
        from .engine.folders import Folders

        folders = Folders(args.models_dir)
        names = folders.list_files("checkpoints")
        missing = [nid for nid, node in loaders.items() if node["inputs"]["ckpt_name"] not in names]
        if not missing:
            return None
        if len(names) != 1:
            wanted = sorted({loaders[nid]["inputs"]["ckpt_name"] for nid in missing})
            print(f"note: the workflow wants {', '.join(wanted)}, which {folders.folder('checkpoints')} does not "
                  f"have ({len(names)} checkpoints there); pass --ckpt FILE, or --demo to try the random demo "
                  "model", file=sys.stderr)
            return None
        models_dir, ckpt = folders.models, names[0]
        loaders = {nid: loaders[nid] for nid in missing}
    assert ckpt is not None
    for nid, node in loaders.items():
        old = node["inputs"]["ckpt_name"]
        if old != ckpt:
            print(f"note: node {nid} ({node.get('class_type')}): ckpt_name {old!r} -> {ckpt!r}", file=sys.stderr)
            node["inputs"]["ckpt_name"] = ckpt
    _note_demo(ckpt, args.demo)
    return models_dir


def _run(args: argparse.Namespace) -> int:
    path = Path(args.workflow)
    data = _read_workflow(path)
    _check_device(args.device)
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        from .graph import Workflow

        prompt = Workflow.load(data).to_api()  # file names are checked by the engine, after --set
    elif isinstance(data, dict) and isinstance(data.get("prompt"), dict):  # a POST /prompt body
        prompt = data["prompt"]
    else:
        prompt = data
    if not isinstance(prompt, dict):
        raise ValueError(f"{path} holds a JSON {type(prompt).__name__}, not a workflow; pass a file saved from "
                         "ComfyUI or one of comfykit's workflows/*.json")
    _apply_sets(prompt, args.set)
    models_dir = _map_checkpoints(prompt, args)
    engine = _engine(args, models_dir, output_dir=args.output)
    result = _execute(engine, prompt, args)
    for path_out in result.files:
        print(path_out)
    if not result.files:
        print(json.dumps(result.outputs, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


