"""What a finished run gives back, the same for every backend."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .events import Event


@dataclass
class Result:
    """Images, UI outputs and bookkeeping of one executed prompt.

    ``outputs`` is ComfyUI's history ``outputs`` (``{node_id: ui_dict}``), ``images_by_node`` the PIL images of
    each output node in the order the node returned them, ``executed``/``cached`` the node ids that ran or were
    replayed from cache, and ``timings`` the seconds each executed node took.
    """

    prompt_id: str
    prompt: dict[str, Any] = field(default_factory=dict)
    status: str = "success"  # "success" | "error" | "interrupted"
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    images_by_node: dict[str, list[Any]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    error: Exception | None = None

    @property
    def images(self) -> list[Any]:
        """Every output image (PIL), output nodes in execution order."""
        return [im for ims in self.images_by_node.values() for im in ims]

    @property
    def image(self) -> Any:
        """The first output image, or None."""
        ims = self.images
        return ims[0] if ims else None

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def save(self, folder: str | Path, prefix: str = "comfykit") -> list[Path]:
        """Write every image as PNG into ``folder`` and return the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, im in enumerate(self.images):
            path = folder / f"{prefix}_{i:05}.png"
            im.save(path)
            paths.append(path)
        return paths

    def __repr__(self) -> str:
        return (f"Result(prompt_id={self.prompt_id!r}, status={self.status!r}, images={len(self.images)}, "
                f"executed={self.executed}, cached={self.cached})")

    def _repr_html_(self) -> str:
        tiles = []
        for node_id, ims in self.images_by_node.items():
            for im in ims:
                buf = io.BytesIO()
                thumb = im.copy()
                thumb.thumbnail((384, 384))
                thumb.save(buf, format="PNG")
                data = base64.b64encode(buf.getvalue()).decode()
                tiles.append(f'<figure style="display:inline-block;margin:4px"><img src="data:image/png;base64,'
                             f'{data}"/><figcaption style="font-size:smaller">node {html.escape(node_id)} '
                             f'&middot; {im.width}&times;{im.height}</figcaption></figure>')
        total = sum(self.timings.values())
        summary = (f"<div style='font-family:monospace;font-size:smaller'>{html.escape(self.status)} &middot; "
                   f"ran {len(self.executed)} node(s) in {total:.2f}s &middot; cached {len(self.cached)}</div>")
        return summary + "".join(tiles)
