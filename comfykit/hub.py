"""Download real models from the Hugging Face Hub into a ComfyUI-style models folder (demo fallback offline).

>>> from comfykit import hub
>>> hub.download("sd15", "models")             # models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors
>>> hub.download("flux-schnell", "models")     # models/checkpoints/flux1-schnell-fp8.safetensors (all-in-one)
>>> hub.download("flux-schnell-split", "models")   # diffusion_models/, text_encoders/ and vae/ files
>>> name = hub.ensure_checkpoint("models")     # a real checkpoint when online, else the tiny demo one

The file names and repositories are those ComfyUI's own template workflows link to, so a downloaded model fits
the template that uses it. Gated models (SD3.5 from Stability AI) need their licence accepted on the hub and a
login: ``huggingface-cli login`` or ``HF_TOKEN``.
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
    # FLUX.1 and SD3.5 all-in-one checkpoints (diffusion model + text encoders + VAE), fp8: they fit 16 GB GPUs
    "flux-schnell": ("Comfy-Org/flux1-schnell", "flux1-schnell-fp8.safetensors", "checkpoints"),
    "sd3.5-large": ("Comfy-Org/stable-diffusion-3.5-fp8", "sd3.5_large_fp8_scaled.safetensors", "checkpoints"),
}

_FLUX_TEXT = [("comfyanonymous/flux_text_encoders", "clip_l.safetensors", "text_encoders"),
              ("comfyanonymous/flux_text_encoders", "t5xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders"),
              ("Comfy-Org/Lumina_Image_2.0_Repackaged", "split_files/vae/ae.safetensors", "vae")]
_SD35_TEXT = [("stabilityai/stable-diffusion-3.5-medium", f"text_encoders/{name}", "text_encoders")
              for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp8_e4m3fn.safetensors")]

#: shortcut -> the files of a split-file model (UNETLoader + the CLIP loaders + VAELoader in ComfyUI's templates)
BUNDLES: dict[str, list[tuple[str, str, str]]] = {
    "flux-schnell-split": [("Comfy-Org/flux1-schnell", "flux1-schnell.safetensors", "diffusion_models"), *_FLUX_TEXT],
    "flux-dev": [("Comfy-Org/flux1-dev", "flux1-dev.safetensors", "diffusion_models"), *_FLUX_TEXT],
    "sd3.5-medium": [("stabilityai/stable-diffusion-3.5-medium", "sd3.5_medium.safetensors", "checkpoints"),
                     *_SD35_TEXT],
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
    raise ValueError(f"unknown model {what!r}: use one of {', '.join([*SHORTCUTS, *BUNDLES])}, (repo_id, filename) "
                     "or 'owner/repo/file.safetensors'")


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
             token: str | None = None) -> Path | list[Path]:
    """Fetch a model file into `models_dir/<folder>/` (skipped when already there) and return its path.

    A split-file shortcut (``BUNDLES``: "flux-schnell-split", "flux-dev", "sd3.5-medium") fetches each of its files
    and returns their paths.
    """
    if isinstance(what, str) and what in BUNDLES:
        return [download((repo, name), models_dir, folder=sub, token=token) for repo, name, sub in BUNDLES[what]]
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
        if _gated(e):
            raise ModelError(f"{repo_id} is gated: accept its licence at https://huggingface.co/{repo_id}, then log "
                             "in with `huggingface-cli login` (or set HF_TOKEN, or pass token=) and try again; "
                             f"or put {Path(filename).name} in {target_dir} yourself") from None
        raise ModelError(f"could not download {filename} from {repo_id} ({type(e).__name__}: {reason}); check the "
                         f"internet connection and the name, or put the file in {target_dir} yourself") from None
    if got.resolve() != target.resolve():
        shutil.move(str(got), str(target))  # a file in a repo subfolder lands flat in models/<folder>
    return target


def _gated(exc: Exception) -> bool:
    """A hub error that means "log in / accept the licence" (gated or private repo, 401/403)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return type(exc).__name__ in ("GatedRepoError", "RepositoryNotFoundError") or status in (401, 403)


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
