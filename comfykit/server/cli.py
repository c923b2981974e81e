"""Command line of ``python -m comfykit.server``: ComfyUI main.py's core flags, so its launchers work."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..graph.limits import Limits

log = logging.getLogger(__name__)


class DefaultsHelp(argparse.HelpFormatter):
    """Help that shows each option's default, unless it is empty or the text already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (ComfyUI's names and defaults, plus ``--models-dir``)."""
    p = argparse.ArgumentParser(
        prog="python -m comfykit.server",
        description="Serve comfykit's embedded engine over ComfyUI's HTTP/WebSocket API. Flags of ComfyUI's "
                    "main.py that comfykit does not know are accepted and ignored with a warning.",
        formatter_class=DefaultsHelp)
    p.add_argument("--listen", type=str, default="127.0.0.1", metavar="IP", nargs="?", const="0.0.0.0",
                   help="address(es) to listen on, comma separated; bare --listen means 0.0.0.0 (all)")
    p.add_argument("--port", type=int, default=8188, help="port to listen on; 0 picks a free one (default 8188)")
    p.add_argument("--models-dir", default=None,
                   help="ComfyUI-style models folder (checkpoints/, loras/, vae/, ...); default $COMFYKIT_MODELS "
                        "or ./models")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    vram = p.add_mutually_exclusive_group()
    vram.add_argument("--highvram", action="store_true", help="keep every model on the GPU")
    vram.add_argument("--normalvram", action="store_true", help="unload idle models when memory runs short "
                                                                "(default)")
    vram.add_argument("--lowvram", action="store_true", help="stream a model that does not fit, layer by layer")
    vram.add_argument("--novram", action="store_true", help="keep weights in host RAM, stream every layer")
    p.add_argument("--reserve-vram", type=float, default=0.0, metavar="GB",
                   help="GPU memory in GB left for other programs")
    add_precision_flags(p)
    add_compile_flags(p)
    p.add_argument("--force-channels-last", action="store_true",
                   help="store convolution weights channels-last (as ComfyUI's flag)")
    p.add_argument("--demo", action="store_true",
                   help="also serve comfykit's tiny random demo checkpoint (made in MODELS/checkpoints if absent)")
    p.add_argument("--output-directory", default=None, help="where SaveImage writes (default ./output)")
    p.add_argument("--input-directory", default=None, help="where LoadImage reads and uploads go (./input)")
    p.add_argument("--temp-directory", default=None,
                   help="parent of the temp folder (as ComfyUI, 'temp' is appended)")
    p.add_argument("--preview-method", default="auto", choices=["none", "auto", "latent2rgb", "taesd"],
                   help="live step previews (default auto = latent2rgb; ComfyUI's own default is none)")
    p.add_argument("--preview-size", type=int, default=512, help="preview images are fitted into this size")
    launch = p.add_mutually_exclusive_group()
    launch.add_argument("--auto-launch", action="store_true", help="open the page in the default browser")
    launch.add_argument("--disable-auto-launch", action="store_true", help="do not open a browser (default)")
    p.add_argument("--dont-print-server", action="store_true", help="do not print the server address")
    p.add_argument("--max-upload-size", type=float, default=100, help="largest upload in MB (default 100)")
    p.add_argument("--enable-cors-header", type=str, default=None, metavar="ORIGIN", nargs="?", const="*",
                   help="allow cross-origin requests from ORIGIN (default '*' when given without a value)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-classic", action="store_true", help="keep only the last prompt's outputs "
                                                                    "(default)")
    cache.add_argument("--cache-lru", type=int, default=0, metavar="N", help="keep up to N node results")
    cache.add_argument("--cache-none", action="store_true", help="no caching: every node runs every time")
    p.add_argument("--disable-metadata", action="store_true", help="do not embed the prompt in saved PNGs")
    p.add_argument("--quick-test-for-ci", action="store_true", help="build everything, then exit")
    p.add_argument("--max-history", type=int, default=10000, help="finished prompts kept in /history")
    limits = Limits.server_defaults()
    p.add_argument("--max-pixels", type=int, default=limits.max_pixels, metavar="N",
                   help="largest width x height a prompt may ask for (0: no limit)")
    p.add_argument("--max-batch", type=int, default=limits.max_batch, metavar="N",
                   help="largest batch_size a prompt may ask for (0: no limit)")
    p.add_argument("--max-prompt-nodes", type=int, default=limits.max_prompt_nodes, metavar="N",
                   help="most nodes in one prompt (0: no limit)")
    p.add_argument("--max-text-tokens", type=int, default=limits.max_text_tokens, metavar="N",
                   help="longest text input, in estimated CLIP tokens (0: no limit)")
    return p


def limits_from(args: argparse.Namespace) -> Limits:
    """The prompt limits the flags ask for (0 or less switches one off)."""
    def bound(value: int) -> int | None:
        return value if value and value > 0 else None

    return Limits(max_pixels=bound(args.max_pixels), max_batch=bound(args.max_batch),
                  max_prompt_nodes=bound(args.max_prompt_nodes), max_text_tokens=bound(args.max_text_tokens))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; unknown ComfyUI flags are warned about and dropped."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        print(f"warning: ignoring options comfykit does not support: {' '.join(unknown)}", file=sys.stderr)
    return args


#: ComfyUI's precision flags -> the Engine dtype options they set
PRECISION_FLAGS = {
    "force_fp32": {"dtype": "fp32", "text_encoder_dtype": "fp32", "vae_dtype": "fp32"},
    "force_fp16": {"dtype": "fp16", "text_encoder_dtype": "fp16"},
    **{f"{name}_unet": {"dtype": name} for name in ("fp32", "fp16", "bf16")},
    **{f"{name}_vae": {"vae_dtype": name} for name in ("fp32", "fp16", "bf16")},
    **{f"{name}_text_enc": {"text_encoder_dtype": name} for name in ("fp32", "fp16", "bf16")},
}


def add_precision_flags(p: argparse.ArgumentParser) -> None:
    """ComfyUI's --force-fp32/--force-fp16 and --{fp32,fp16,bf16}-{unet,vae,text-enc}, one of each group."""
    force = p.add_mutually_exclusive_group()
    force.add_argument("--force-fp32", action="store_true", help="compute everything in fp32")
    force.add_argument("--force-fp16", action="store_true", help="diffusion models and text encoders in fp16")
    for part, what in (("unet", "diffusion models"), ("vae", "the VAE"), ("text-enc", "text encoders")):
        group = p.add_mutually_exclusive_group()
        for name in ("fp32", "fp16", "bf16"):
            group.add_argument(f"--{name}-{part}", action="store_true", help=f"run {what} in {name}")


def precision_kwargs(args: argparse.Namespace) -> dict[str, str]:
    """The Engine dtype options of the precision flags given (later, narrower flags win over --force-*)."""
    kwargs: dict[str, str] = {}
    for flag, options in PRECISION_FLAGS.items():
        if getattr(args, flag, False):
            kwargs.update(options)
    return kwargs


def add_compile_flags(p: argparse.ArgumentParser) -> None:
    """``--compile`` and ``--compile-mode``, for ``comfykit serve`` and the engine commands alike."""
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each diffusion model once (the first run is slower, later ones faster)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode for --compile",
                   choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))


def compile_value(args: argparse.Namespace) -> bool | str | None:
    """``Engine(compile=...)`` from the flags: the mode (implying --compile), True, or None when neither is given."""
    if getattr(args, "compile", False) or getattr(args, "compile_mode", None):
        return args.compile_mode or True
    return None


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The Engine(...) arguments the flags ask for."""
    import os

    kwargs: dict[str, Any] = {"models_dir": args.models_dir, "output_dir": args.output_directory,
                              "input_dir": args.input_directory, "previews": args.preview_method,
                              "preview_size": args.preview_size}
    if args.temp_directory is not None:
        kwargs["temp_dir"] = os.path.join(args.temp_directory, "temp")
    if args.cpu:
        kwargs["device"] = "cpu"
    for flag, mode in (("highvram", "high"), ("lowvram", "low"), ("novram", "no")):
        if getattr(args, flag, False):
            kwargs["vram"] = mode
    if getattr(args, "reserve_vram", 0.0):
        kwargs["reserve_vram"] = args.reserve_vram
    if compile_value(args) is not None:
        kwargs["compile"] = compile_value(args)
    kwargs.update(precision_kwargs(args))
    if getattr(args, "force_channels_last", False):
        kwargs["channels_last"] = True
    if args.cache_lru > 0:
        kwargs["cache"], kwargs["cache_size"] = "lru", args.cache_lru
    elif args.cache_none:
        kwargs["cache"] = "none"
    return kwargs


def missing_extra(prog: str, modules: dict[str, str]) -> str | None:
    """The install hint when a module an extra provides is missing ({module: extra}), else None."""
    import importlib.util

    for module, extra in modules.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken install
            found = False
        if not found:
            return (f"{prog} needs {module}, which is not installed: pip install 'comfykit[{extra}]'"
                    + (" (install torch first, the CPU or CUDA build you want)" if extra == "engine" else ""))
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the server until Ctrl-C; returns the exit status."""
    # Checked before parsing, so even --help says what to install instead of a ModuleNotFoundError later.
    hint = missing_extra("comfykit serve", {"aiohttp": "server", "torch": "engine", "safetensors": "engine"})
    if hint:
        print(f"error: {hint}", file=sys.stderr)
        return 1
    from ..errors import ServerError
    from .app import create_app
    from .runner import run_blocking

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..engine import Engine

    if args.demo:
        from .. import demo
        from ..engine.folders import Folders

        models = Folders(args.models_dir).models
        name = demo.ensure_demo_checkpoint(models)
        args.models_dir = str(models)
        print(f"serving comfykit's demo checkpoint {name} from {models}/checkpoints: tiny random weights, so its "
              "pictures are noise. For real pictures put a Stable Diffusion checkpoint there (see README, "
              "Models).", flush=True)
    try:
        engine = Engine(**engine_kwargs(args))
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.disable_metadata:
        engine.disable_metadata = True
    app = create_app(engine, max_upload_size_mb=args.max_upload_size, enable_cors=args.enable_cors_header,
                     preview_size=args.preview_size, max_history=args.max_history, limits=limits_from(args))
    if args.quick_test_for_ci:
        print("quick test for CI: engine and server built, exiting", flush=True)
        return 0
    try:
        run_blocking(engine, app, args.listen, args.port, print_url=not args.dont_print_server,
                     auto_launch=args.auto_launch)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
