"""Download real checkpoints from the Hugging Face Hub into a ComfyUI-style models folder (demo fallback offline).

>>> from comfykit import hub
>>> hub.download("sd15", "models")             # models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors
>>> name = hub.ensure_checkpoint("models")     # a real checkpoint when online, else the tiny demo one
"""

from __future__ import annotations

import os
import shutil
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

from .errors import ModelError

# shortcut -> (repo id, file in the repo, models subfolder)
SHORTCUTS: dict[str, tuple[str, str, str]] = {
    "sd15": ("Comfy-Org/stable-diffusion-v1-5-archive", "v1-5-pruned-emaonly-fp16.safetensors", "checkpoints"),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors", "checkpoints"),
    "sdxl-refiner": ("stabilityai/stable-diffusion-xl-refiner-1.0", "sd_xl_refiner_1.0.safetensors", "checkpoints"),
    "sdxl-vae": ("stabilityai/sdxl-vae", "sdxl_vae.safetensors", "vae"),
    "sd-vae-ft-mse": ("stabilityai/sd-vae-ft-mse-original", "vae-ft-mse-840000-ema-pruned.safetensors", "vae"),
}


def resolve(what: str | tuple[str, str]) -> tuple[str, str, str | None]:
    """A shortcut, `(repo_id, filename)` or `"owner/repo/path/file.safetensors"` -> (repo, file, folder or None)."""
    if isinstance(what, tuple):
        if len(what) != 2:
            raise ValueError(f"expected (repo_id, filename), got {what!r}")
        return what[0], what[1], None
    if what in SHORTCUTS:
        return SHORTCUTS[what]
    parts = what.strip("/").split("/")
    if len(parts) >= 3:
        return "/".join(parts[:2]), "/".join(parts[2:]), None
    raise ValueError(f"unknown model {what!r}: use one of {', '.join(SHORTCUTS)}, (repo_id, filename) or "
                     "'owner/repo/file.safetensors'")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co (or $HF_ENDPOINT) answers a TCP connection within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def download(what: str | tuple[str, str], models_dir: str | Path, *, folder: str | None = None,
             token: str | None = None) -> Path:
    """Fetch a model file into `models_dir/<folder>/` (skipped when already there) and return its path."""
    repo_id, filename, default_folder = resolve(what)
    target_dir = Path(models_dir) / (folder or default_folder or "checkpoints")
    target = target_dir / Path(filename).name
    if target.is_file():
        return target
    try:
        import huggingface_hub
    except ImportError:
        raise ModelError("downloading needs huggingface_hub: pip install huggingface_hub") from None
    target_dir.mkdir(parents=True, exist_ok=True)
    try:
        got = Path(huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename, local_dir=str(target_dir),
                                                   token=token))
    except Exception as e:  # the hub raises many kinds (offline, gated, 404); all mean the same to a user
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"could not download {filename} from {repo_id} ({type(e).__name__}: {reason}); check the "
                         f"internet connection and the name, or put the file in {target_dir} yourself") from None
    if got.resolve() != target.resolve():
        shutil.move(str(got), str(target))  # a file in a repo subfolder lands flat in models/<folder>
    return target


def ensure_checkpoint(models_dir: str | Path, prefer: str = "sd15", *, timeout: float = 3.0) -> str:
    """File name of a checkpoint in `models_dir/checkpoints`: `prefer` if present or downloadable, else the demo."""
    from . import demo

    repo_id, filename, _ = resolve(prefer)
    name = Path(filename).name
    if (Path(models_dir) / "checkpoints" / name).is_file():
        return name
    if hub_reachable(timeout):
        try:
            return download(prefer, models_dir, folder="checkpoints").name
        except ModelError as e:
            warnings.warn(f"{e}; using the tiny demo checkpoint instead", stacklevel=2)
    else:
        warnings.warn(f"the Hugging Face Hub is not reachable; using the tiny random-weight demo checkpoint "
                      f"instead of {name} (its images are noise)", stacklevel=2)
    return demo.ensure_demo_checkpoint(models_dir)
