"""ComfyUI-style folders: models (checkpoints, loras, vae, ...), input, output and temp, and their file lists."""

from __future__ import annotations

import mimetypes
import os
import stat
import time
from pathlib import Path
from typing import Any, NamedTuple

#: Model file extensions ComfyUI lists (``folder_paths.supported_pt_extensions``).
MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})

#: The model sub-folders the engine's nodes read, as under ComfyUI's ``models/``.
MODEL_FOLDERS = ("checkpoints", "loras", "vae", "vae_approx", "embeddings", "diffusion_models", "text_encoders",
                 "controlnet", "upscale_models")

#: Folders read under more than one name, as ComfyUI's ``folder_paths`` maps them (the first is the main one).
FOLDER_NAMES = {"diffusion_models": ("diffusion_models", "unet"), "text_encoders": ("text_encoders", "clip"),
                "controlnet": ("controlnet", "t2i_adapter")}
#: The old names, accepted wherever a folder kind is asked for
_OLD_NAMES = {"unet": "diffusion_models", "clip": "text_encoders"}

#: A listing is trusted only when every directory it read was last changed this long before the scan began:
#: a file added within the file system's timestamp granularity of a scan might leave the directory's mtime as
#: it was (FAT has 2 s, ext4 a kernel tick), and must not hide behind a cached list.
SETTLE_NS = 2_000_000_000


class _Listing(NamedTuple):
    names: tuple[str, ...]
    stamps: tuple[tuple[str, int | None], ...]  # (directory, st_mtime_ns or None when absent) of every dir read
    settled: bool


def _mtime(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns if stat.S_ISDIR(st.st_mode) else None


class Folders:
    """Where the engine reads models and input images and writes output and temp files.

    >>> f = Folders("models", output="out")                  # doctest: +SKIP
    >>> f.list_files("checkpoints")                           # doctest: +SKIP
    ['sd15/v1-5-pruned-emaonly.safetensors']
    """

    def __init__(self, models: str | os.PathLike | None = None, *, output: str | os.PathLike | None = None,
                 input: str | os.PathLike | None = None, temp: str | os.PathLike | None = None):  # noqa: A002
        if models is None:
            models = os.environ.get("COMFYKIT_MODELS") or "models"
        self.models = Path(models).expanduser().resolve()
        self.output = Path(output if output is not None else "output").expanduser().resolve()
        self.input = Path(input if input is not None else "input").expanduser().resolve()
        self.temp = Path(temp if temp is not None else "temp").expanduser().resolve()
        self._listings: dict[str, _Listing] = {}
        self.scans = 0  # directory listings read from disk (a cached answer costs one stat per directory)

    def __repr__(self) -> str:
        return f"Folders(models={str(self.models)!r}, output={str(self.output)!r}, input={str(self.input)!r}, " \
               f"temp={str(self.temp)!r})"

    def folder(self, kind: str) -> Path:
        """The directory of ``kind``: a model folder name, or "input", "output", "temp"."""
        if kind in ("input", "output", "temp"):
            return getattr(self, kind)
        return self.dirs(kind)[0]

    def dirs(self, kind: str) -> list[Path]:
        """Every directory read for ``kind`` (``diffusion_models`` also reads ``unet``, ``text_encoders``
        also ``clip``, as ComfyUI does); the first is where new files go."""
        if kind in ("input", "output", "temp"):
            return [getattr(self, kind)]
        kind = _OLD_NAMES.get(kind, kind)
        if kind not in MODEL_FOLDERS:
            raise ValueError(f"unknown folder {kind!r}; use one of {', '.join(MODEL_FOLDERS)}, input, output, temp")
        return [self.models / name for name in FOLDER_NAMES.get(kind, (kind,))]

    def list_files(self, kind: str) -> list[str]:
        """Sorted relative paths (``/``-separated) of the files ComfyUI would offer for ``kind``.

        Model folders are searched recursively and filtered by model extension; "input" lists the image files at
        the top of the input folder, like LoadImage's combo. Model and input listings are cached and read again
        only when one of their directories changed (its mtime), so asking per run costs a few ``stat`` calls.
        """
        if kind in ("output", "temp"):
            return list(self._scan(kind).names)
        cached = self._listings.get(kind)
        if cached is not None and cached.settled and all(_mtime(d) == m for d, m in cached.stamps):
            return list(cached.names)
        listing = self._scan(kind)
        self._listings[kind] = listing
        return list(listing.names)

    def _scan(self, kind: str) -> _Listing:
        base = self.folder(kind)
        started = time.time_ns()
        top = _mtime(str(base))
        if top is None and not any(_mtime(str(d)) is not None for d in self.dirs(kind)):
            return _Listing((), tuple((str(d), None) for d in self.dirs(kind)), True)
        self.scans += 1
        if kind == "input":
            # top-level images first, as LoadImage's combo lists them; images in subfolders (the page's "pasted/"
            # and "clipspace/") after them, since ComfyUI's LoadImage accepts any existing input file
            names = sorted(p.name for p in base.iterdir() if p.is_file() and _is_image(p.name))
            stamps = [(str(base), top)]
            for sub in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
                stamps.append((str(sub), _mtime(str(sub))))
                names += sorted(p.relative_to(base).as_posix() for p in sub.rglob("*")
                                if p.is_file() and _is_image(p.name))
            settled = all(m is None or m < started - SETTLE_NS for _, m in stamps)
            return _Listing(tuple(names), tuple(stamps), settled)
        if kind in ("output", "temp"):
            names = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
            return _Listing(tuple(names), (), False)
        found, stamps = set(), []
        for base in self.dirs(kind):
            stamps.append((str(base), _mtime(str(base))))
            for root, dirs, files in os.walk(base, followlinks=True):
                stamps.append((root, _mtime(root)))
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    if Path(name).suffix.lower() in MODEL_EXTENSIONS:
                        found.add((Path(root) / name).relative_to(base).as_posix())
        settled = all(m is None or m < started - SETTLE_NS for _, m in stamps)  # absent: checked by mtime None
        return _Listing(tuple(sorted(found)), tuple(stamps), settled)

    def files(self) -> dict[str, list[str]]:
        """Every file list ``comfykit.graph.builtin.object_info(files)`` needs (cached per folder, see list_files)."""
        out = {kind: self.list_files(kind) for kind in MODEL_FOLDERS}
        out["input"] = self.list_files("input")
        return out

    def get_full_path(self, kind: str, name: str) -> Path:
        """The absolute path of file ``name`` in folder ``kind``; FileNotFoundError names the folder searched."""
        bases = self.dirs(kind)
        for base in bases:
            path = _inside(base, name)
            if path is None:
                raise ValueError(f"{name!r} is not inside the {kind} folder {base}")
            if path.is_file():
                return path
        where = " or ".join(str(b) for b in bases)
        raise FileNotFoundError(f"{name!r} not found in {where}; put the file there or pick one of "
                                f"{self.list_files(kind)[:10]}")

    def annotated_path(self, name: str, default: str = "input") -> Path:
        """Resolve ``"name.png [output]"``-style names (ComfyUI's annotated file names) to a path."""
        kind = default
        for tag in ("input", "output", "temp"):
            suffix = f" [{tag}]"
            if name.endswith(suffix):
                name, kind = name[: -len(suffix)], tag
                break
        path = _inside(self.folder(kind), name)
        if path is None:
            raise ValueError(f"{name!r} is not inside the {kind} folder")
        return path

    def save_image_path(self, prefix: str, base: Path, width: int, height: int) -> tuple[Path, str, int, str]:
        """ComfyUI's ``get_save_image_path``: (folder, file name stem, next counter, subfolder)."""
        if "%" in prefix:
            now = time.localtime()
            for key, value in (("%width%", str(width)), ("%height%", str(height)),
                               ("%year%", str(now.tm_year)), ("%month%", f"{now.tm_mon:02}"),
                               ("%day%", f"{now.tm_mday:02}"), ("%hour%", f"{now.tm_hour:02}"),
                               ("%minute%", f"{now.tm_min:02}"), ("%second%", f"{now.tm_sec:02}")):
                prefix = prefix.replace(key, value)
        norm = os.path.normpath(prefix)
        subfolder, filename = os.path.dirname(norm), os.path.basename(norm)
        base = base.resolve()
        folder = Path(os.path.abspath(os.path.join(base, subfolder)))
        if os.path.commonpath((str(base), str(folder))) != str(base):
            raise ValueError(f"Saving image outside the output folder is not allowed: filename_prefix {prefix!r} "
                             f"points to {folder}, outside {base}; use a relative prefix such as 'sub/name'")
        folder.mkdir(parents=True, exist_ok=True)
        counter = 1 + max((n for n in (_counter_of(p.name, filename) for p in folder.iterdir()) if n is not None),
                          default=0)
        return folder, filename, counter, subfolder.replace(os.sep, "/")

    def as_dict(self) -> dict[str, Any]:
        return {"models": str(self.models), "output": str(self.output), "input": str(self.input),
                "temp": str(self.temp)}


def _counter_of(name: str, filename: str) -> int | None:
    """N for ``<filename>_<N>_...`` (case-insensitive like ``os.path.normcase`` on Windows), else None."""
    prefix = os.path.normcase(filename) + "_"
    name = os.path.normcase(name)
    if not name.startswith(prefix):
        return None
    digits = name[len(prefix):].split("_", 1)[0]
    return int(digits) if digits.isdigit() else None


def _inside(base: Path, name: str) -> Path | None:
    """``base/name`` if it stays inside ``base``, else None (refuses ``..`` and absolute names)."""
    base = base.resolve()
    path = Path(os.path.abspath(os.path.join(base, name)))
    if os.path.commonpath((str(base), str(path))) != str(base) or path == base:
        return None
    return path


def _is_image(name: str) -> bool:
    kind = mimetypes.guess_type(name)[0]
    return bool(kind and kind.startswith("image/")) or name.lower().endswith((".webp", ".avif"))
