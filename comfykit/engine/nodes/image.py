"""Image nodes: LoadImage, SaveImage, PreviewImage, ImageScale."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import torch
from PIL.PngImagePlugin import PngInfo

from ..images import common_upscale, load_image_file, tensor_to_pil
from .base import Node


class LoadImage(Node):
    """An image from the input folder as IMAGE plus MASK (1 - alpha)."""

    FUNCTION = "load_image"
    RETURN_TYPES = ("IMAGE", "MASK")

    def _path(self, image: str):
        return self.engine.folders.annotated_path(image, "input")

    def load_image(self, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = self._path(image)
        if not path.is_file():
            raise FileNotFoundError(f"LoadImage: {image!r} is not in the input folder {self.engine.folders.input}")
        return load_image_file(path)

    def IS_CHANGED(self, image: str | None = None, **_: Any) -> str:  # noqa: N802 - ComfyUI's name
        """sha256 of the file, so replacing the file under the same name re-runs the node."""
        digest = hashlib.sha256()
        with open(self._path(image), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


class SaveImage(Node):
    """Write PNGs to the output folder with ComfyUI's names, counter and metadata chunks."""

    FUNCTION = "save_images"
    OUTPUT_NODE = True
    HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    folder_type = "output"
    prefix_append = ""
    compress_level = 4

    def _base(self):
        return self.engine.folders.output

    def save_images(self, images: torch.Tensor, filename_prefix: str = "ComfyUI", prompt: Any = None,
                    extra_pnginfo: dict[str, Any] | None = None) -> dict[str, Any]:
        prefix = filename_prefix + self.prefix_append
        folder, filename, counter, subfolder = self.engine.folders.save_image_path(
            prefix, self._base(), int(images[0].shape[1]), int(images[0].shape[0]))
        metadata_on = not getattr(self.engine, "disable_metadata", False)
        refs, pils, files = [], [], []
        for batch_number, img in enumerate(tensor_to_pil(images)):
            info = None
            if metadata_on:
                info = PngInfo()
                if prompt is not None:
                    info.add_text("prompt", json.dumps(prompt))
                for key, value in (extra_pnginfo or {}).items():
                    info.add_text(key, json.dumps(value))
            name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            path = folder / name
            img.save(path, pnginfo=info, compress_level=self.compress_level)
            refs.append({"filename": name, "subfolder": subfolder, "type": self.folder_type})
            pils.append(img)
            files.append(path)
            counter += 1
        return {"ui": {"images": refs}, "result": (), "images": pils, "files": files}


class PreviewImage(SaveImage):
    """Like SaveImage, into the temp folder with a random suffix and fast compression."""

    HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    folder_type = "temp"
    compress_level = 1

    def __init__(self, engine: Any = None):
        super().__init__(engine)
        # ComfyUI's alphabet (with its 'p' for 'w' typo kept), fixed per node instance
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))

    def _base(self):
        return self.engine.folders.temp

    def save_images(self, images: torch.Tensor, filename_prefix: str = "ComfyUI", prompt: Any = None,
                    extra_pnginfo: dict[str, Any] | None = None) -> dict[str, Any]:
        return super().save_images(images, "ComfyUI", prompt, extra_pnginfo)


class ImageScale(Node):
    """Resize images; a 0 side keeps the aspect ratio."""

    FUNCTION = "upscale"
    RETURN_TYPES = ("IMAGE",)

    def upscale(self, image: torch.Tensor, upscale_method: str, width: int, height: int,
                crop: str) -> tuple[torch.Tensor]:
        if width == 0 and height == 0:
            return (image,)
        samples = image.movedim(-1, 1)
        if width == 0:
            width = max(1, round(samples.shape[3] * height / samples.shape[2]))
        elif height == 0:
            height = max(1, round(samples.shape[2] * width / samples.shape[3]))
        return (common_upscale(samples, width, height, upscale_method, crop).movedim(1, -1),)
