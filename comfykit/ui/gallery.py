"""A gallery of generated images with their settings, each savable as a PNG that keeps the settings."""

from __future__ import annotations

import html
import io
import json
import threading
from pathlib import Path
from typing import Any

import ipywidgets as w


def image_bytes(image: Any, fmt: str = "png", max_size: int | None = None, quality: int = 85) -> bytes:
    """Encode a PIL image for an ipywidgets Image, shrunk to fit ``max_size`` when given."""
    if max_size is not None and max(image.size) > max_size:
        image = image.copy()
        image.thumbnail((max_size, max_size))
    if fmt == "jpeg" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format=fmt.upper(), **({"quality": quality} if fmt == "jpeg" else {}))
    return buf.getvalue()


def caption(settings: dict[str, Any], width: int = 60) -> str:
    """``seed=1 · steps=20 · cfg=7.0``; long texts (prompts) shortened."""
    parts = []
    for key, value in settings.items():
        text = str(value)
        if len(text) > width:
            text = text[: width - 1] + "…"
        parts.append(f"{key}={text}")
    return " · ".join(parts)


def save_png(image: Any, path: str | Path, settings: dict[str, Any], prompt: dict[str, Any] | None) -> Path:
    """Write ``image`` as PNG with ComfyUI's ``prompt`` text chunk and our ``settings`` chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))  # same chunk name ComfyUI's SaveImage writes
    info.add_text("comfykit", json.dumps(settings, default=str))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=info)
    return path


class GalleryEntry:
    """One image in the gallery: the PIL image, the settings that made it, and its Save button."""

    def __init__(self, gallery: Gallery, index: int, image: Any, settings: dict[str, Any],
                 prompt: dict[str, Any] | None, thumb_size: int):
        self.gallery, self.index = gallery, index
        self.image, self.settings, self.prompt = image, dict(settings), prompt
        self.path: Path | None = None
        self.thumb = w.Image(value=image_bytes(image, "png", thumb_size), format="png",
                             layout=w.Layout(max_width=f"{thumb_size}px"))
        self.label = w.HTML(f"<div style='font-size:smaller;max-width:{thumb_size}px;word-wrap:break-word'>"
                            f"{html.escape(caption(self.settings))}</div>")
        self.save_button = w.Button(description="Save", icon="save", layout=w.Layout(width="90px"))
        self.save_button.on_click(lambda _b: self._save_clicked())
        self.widget = w.VBox([self.thumb, self.label, self.save_button],
                             layout=w.Layout(margin="4px", border="1px solid #ddd", padding="4px"))

    def save(self, path: str | Path | None = None) -> Path:
        """Write the PNG (default: ``<gallery folder>/<prefix>_<index>_<seed>.png``) and return its path."""
        if path is None:
            seed = self.settings.get("seed", self.settings.get("noise_seed"))
            name = f"{self.gallery.prefix}_{self.index:05}" + (f"_{seed}" if seed is not None else "") + ".png"
            path = Path(self.gallery.folder) / name
        self.path = save_png(self.image, path, self.settings, self.prompt)
        return self.path

    def _save_clicked(self) -> None:
        try:
            path = self.save()
        except OSError as exc:  # a read-only or missing folder: say so in the widget
            self.save_button.description = "Save failed"
            self.label.value += f"<div style='color:#b00020'>{html.escape(str(exc))}</div>"
            return
        self.save_button.description = "Saved"
        self.save_button.disabled = True
        self.label.value += f"<div style='font-size:smaller'>saved {html.escape(str(path))}</div>"

    def __repr__(self) -> str:
        return f"GalleryEntry({self.index}, {caption(self.settings)!r})"


class Gallery:
    """Generated images, newest first on screen; ``len()``, indexing and ``.images`` in generation order."""

    def __init__(self, folder: str | Path = "comfykit_outputs", prefix: str = "comfykit", thumb_size: int = 256):
        self.folder, self.prefix, self.thumb_size = Path(folder), prefix, thumb_size
        self.entries: list[GalleryEntry] = []
        self._lock = threading.Lock()  # results arrive on backend threads
        self.widget = w.Box([], layout=w.Layout(display="flex", flex_flow="row wrap"))

    def add(self, image: Any, settings: dict[str, Any], prompt: dict[str, Any] | None = None) -> GalleryEntry:
        """Add one image with the settings that produced it."""
        with self._lock:
            entry = GalleryEntry(self, len(self.entries), image, settings, prompt, self.thumb_size)
            self.entries.append(entry)
            self.widget.children = (entry.widget, *self.widget.children)
        return entry

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()
            self.widget.children = ()

    @property
    def images(self) -> list[Any]:
        return [e.image for e in self.entries]

    def save_all(self, folder: str | Path | None = None) -> list[Path]:
        """Save every image (into ``folder`` or the gallery's folder)."""
        return [e.save(None if folder is None else Path(folder) / f"{self.prefix}_{e.index:05}.png")
                for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> GalleryEntry:
        return self.entries[i]

    def __iter__(self):
        return iter(list(self.entries))

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
