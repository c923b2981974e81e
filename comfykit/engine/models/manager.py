"""`ModelManager`: keeps loaded checkpoints between runs and moves them between the compute device and CPU."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from .checkpoint import default_dtypes, load_checkpoint, load_diffusion_model, load_vae
from .text_encoder import TextEncoder

T = TypeVar("T")


def default_device() -> torch.device:
    """CUDA when present, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def file_key(path: str | Path) -> tuple:
    """(resolved path, size, mtime) of a file, or of every weight file of a diffusers folder."""
    path = Path(path).resolve()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".json"))
        return (str(path), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


class ModelManager:
    """Loaded models keyed by (path, size, mtime); the same file loads once and comes back as the same objects.

    >>> manager = ModelManager()
    >>> model, clip, vae = manager.load_checkpoint("models/checkpoints/x.safetensors")
    >>> manager.call(lambda: vae.decode(latent), vae)   # on CUDA OOM, offloads other models and retries
    """

    def __init__(self, device: Any = None, dtype: torch.dtype | None = None, max_loaded: int = 4):
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[tuple, Any] = OrderedDict()

    # -- loading ------------------------------------------------------------------------------------------------
    def _get(self, key: tuple, load: Callable[[], T]) -> T:
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        while len(self._loaded) >= self.max_loaded:
            self._loaded.popitem(last=False)  # least recently used goes first
        value = self._with_retry(load, keep=())
        self._loaded[key] = value
        return value

    def load_checkpoint(self, path: str | Path, embeddings_dir: str | Path | None = None) -> tuple:
        """(DiffusionModel, TextEncoder, VAE) of `path`, loaded once while the file is unchanged."""
        key = ("checkpoint", file_key(path), str(embeddings_dir))
        return self._get(key, lambda: load_checkpoint(path, device=self.device, dtype=self.dtype,
                                                      embeddings_dir=embeddings_dir))

    def load_vae(self, path: str | Path) -> Any:
        """A standalone VAE, loaded once while the file is unchanged."""
        return self._get(("vae", file_key(path)), lambda: load_vae(path, device=self.device))

    def load_diffusion_model(self, path: str | Path, weight_dtype: str = "default") -> Any:
        """A diffusion model file on its own (UNETLoader), loaded once per file and weight_dtype."""
        key = ("diffusion_model", file_key(path), weight_dtype)
        return self._get(key, lambda: load_diffusion_model(path, device=self.device, dtype=self.dtype,
                                                           weight_dtype=weight_dtype))

    def load_text_encoders(self, paths: list[str | Path], type: str, *, cpu: bool = False,  # noqa: A002
                           embeddings_dir: str | Path | None = None) -> Any:
        """CLIPLoader / DualCLIPLoader / TripleCLIPLoader: one text encoder from 1-3 files, loaded once."""
        from .text_encoder_files import load_text_encoders

        device = torch.device("cpu") if cpu else self.device
        key = ("text_encoders", tuple(file_key(p) for p in paths), type, str(device), str(embeddings_dir))
        def load() -> Any:
            encoder = load_text_encoders(paths, type, device=device, embeddings_dir=embeddings_dir)
            encoder.keep_on_cpu = cpu  # ComfyUI's device="cpu": encode there, never move it to the GPU
            return encoder

        return self._get(key, load)

    def load_upscale_model(self, path: str | Path) -> Any:
        """An UpscaleModelLoader model (ESRGAN family built in, others through spandrel), loaded once."""
        from .upscale import load_upscale_model

        return self._get(("upscale_model", file_key(path)), lambda: load_upscale_model(path))

    def loaded(self) -> list[tuple]:
        """Keys of what is loaded now, least recently used first."""
        return list(self._loaded)

    # -- placement ----------------------------------------------------------------------------------------------
    def _models(self) -> list[Any]:
        out = []
        for value in self._loaded.values():
            out += list(value) if isinstance(value, tuple) else [value]
        return out

    def offload(self, keep: tuple = ()) -> None:
        """Move every loaded model but `keep` to CPU and release cached GPU memory."""
        if self.device.type == "cpu":
            return
        keep_ids = {id(m) for m in keep}
        for m in self._models():
            if id(m) not in keep_ids and m.device.type != "cpu":
                m.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def use(self, *models: Any) -> None:
        """Put `models` on the compute device (fp16 UNet/text encoder, bf16 VAE where supported)."""
        unet_dtype, te_dtype, vae_dtype = default_dtypes(self.device, self.dtype)
        for m in models:
            if m is None or getattr(m, "keep_on_cpu", False) or m.device == self.device or (
                    m.device.type == self.device.type == "cuda"):
                continue
            kind = type(m).__name__
            dtype = {"DiffusionModel": unet_dtype, "VAE": vae_dtype}.get(kind)
            if isinstance(m, TextEncoder):  # the FLUX.1/SD3 encoders are TextEncoder subclasses
                dtype = te_dtype
            family = getattr(m, "family", None)
            if family is not None:  # FLUX.1 runs in bf16 where fp16 would overflow
                dtype = family.compute_dtype(self.device, self.dtype)
            self._with_retry(lambda m=m, dtype=dtype: m.to(self.device, dtype), keep=models)

    def call(self, fn: Callable[[], T], *models: Any) -> T:
        """Run `fn` with `models` on the device; on CUDA out-of-memory, offload the others and retry once."""
        self.use(*models)
        return self._with_retry(fn, keep=models)

    def _with_retry(self, fn: Callable[[], T], keep: tuple) -> T:
        try:
            return fn()
        except torch.OutOfMemoryError:
            self.offload(keep=keep)
            return fn()

    def unload_all(self) -> None:
        """Forget every loaded model (engine.free()) and release cached GPU memory."""
        self._loaded.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
