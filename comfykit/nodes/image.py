"""Image nodes: LoadImage, SaveImage, PreviewImage, ImageScale."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from .base import COMBO, FILES, INT, LINK, MAX_RESOLUTION, STRING, Node

IMAGE_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
_SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


class LoadImage(Node):
    """Loads an image from the input folder, with its alpha as a mask (1 - alpha)."""

    DISPLAY, CATEGORY = "Load Image", "image"
    INPUTS = {"image": FILES("input", "Image file in the input folder.", {"image_upload": True})}
    OUTPUTS = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    def _path(self, image: str):
        return self.engine.folders.annotated_path(image, "input")

    def load_image(self, image: str) -> tuple[Any, Any]:
        from ..engine.images import load_image_file

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


def save_png(engine: Any, images: Any, prefix: str, base: Any, folder_type: str, compress_level: int,
             prompt: Any, extra_pnginfo: dict[str, Any] | None) -> dict[str, Any]:
    """Write PNGs with ComfyUI's names, counter and prompt/workflow chunks; the node's ui + images + files."""
    from PIL.PngImagePlugin import PngInfo

    from ..engine.images import tensor_to_pil

    folder, filename, counter, subfolder = engine.folders.save_image_path(
        prefix, base, int(images[0].shape[1]), int(images[0].shape[0]))
    metadata_on = not getattr(engine, "disable_metadata", False)
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
        img.save(path, pnginfo=info, compress_level=compress_level)
        refs.append({"filename": name, "subfolder": subfolder, "type": folder_type})
        pils.append(img)
        files.append(path)
        counter += 1
    return {"ui": {"images": refs}, "result": (), "images": pils, "files": files}


class SaveImage(Node):
    """Saves images as PNG files in the output folder."""

    DISPLAY, CATEGORY = "Save Image", "image"
    INPUTS = {"images": LINK("IMAGE", "Images to save."),
              "filename_prefix": STRING("ComfyUI", "File name prefix.")}
    HIDDEN = _SAVE_HIDDEN
    OUTPUTS = ()
    OUTPUT_NODE = True
    FUNCTION = "save_images"

    def save_images(self, images: Any, filename_prefix: str, prompt: Any = None,
                    extra_pnginfo: dict[str, Any] | None = None) -> dict[str, Any]:
        return save_png(self.engine, images, filename_prefix, self.engine.folders.output, "output", 4, prompt,
                        extra_pnginfo)


class PreviewImage(Node):
    """Shows images without keeping them (temp folder, random suffix, fast compression)."""

    DISPLAY, CATEGORY = "Preview Image", "image"
    INPUTS = {"images": LINK("IMAGE", "Images to show.")}
    HIDDEN = _SAVE_HIDDEN
    OUTPUTS = ()
    OUTPUT_NODE = True
    FUNCTION = "save_images"

    def __init__(self, engine: Any = None):
        super().__init__(engine)
        # ComfyUI's alphabet (with its 'p' for 'w' typo kept), fixed per node instance
        self.suffix = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))

    def save_images(self, images: Any, prompt: Any = None, extra_pnginfo: dict[str, Any] | None = None) -> dict:
        return save_png(self.engine, images, "ComfyUI" + self.suffix, self.engine.folders.temp, "temp", 1, prompt,
                        extra_pnginfo)


class ImageScale(Node):
    """Resizes images to a pixel size (a 0 side keeps the aspect ratio)."""

    DISPLAY, CATEGORY = "Upscale Image", "image/upscaling"
    INPUTS = {"image": LINK("IMAGE", "Images to resize."),
              "upscale_method": COMBO(IMAGE_UPSCALE_METHODS),
              "width": INT(512, 0, MAX_RESOLUTION, 1, "Target width (0 keeps the aspect ratio)."),
              "height": INT(512, 0, MAX_RESOLUTION, 1, "Target height (0 keeps the aspect ratio)."),
              "crop": COMBO(("disabled", "center"))}
    OUTPUTS = ("IMAGE",)
    FUNCTION = "upscale"

    def upscale(self, image: Any, upscale_method: str, width: int, height: int, crop: str) -> tuple[Any]:
        from ..engine.images import common_upscale

        if width == 0 and height == 0:
            return (image,)
        samples = image.movedim(-1, 1)
        if width == 0:
            width = max(1, round(samples.shape[3] * height / samples.shape[2]))
        elif height == 0:
            height = max(1, round(samples.shape[2] * width / samples.shape[3]))
        return (common_upscale(samples, width, height, upscale_method, crop).movedim(1, -1),)
