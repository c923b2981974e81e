"""More image loaders: LoadImageMask (one channel of an input image) and LoadImageOutput (an earlier result)."""

from __future__ import annotations

from typing import Any

from .base import COMBO, FILES
from .image import LoadImage


class LoadImageMask(LoadImage):
    """Loads one channel of an image in the input folder as a mask (alpha as 1 - alpha, like LoadImage's MASK)."""

    DISPLAY, CATEGORY = "Load Image (as Mask)", "mask"
    INPUTS = {"image": FILES("input", "Image file in the input folder.", {"image_upload": True}),
              "channel": COMBO(("alpha", "red", "green", "blue"), "Channel that becomes the mask.")}
    OUTPUTS = ("MASK",)
    FUNCTION = "load_image_mask"

    def load_image_mask(self, image: str, channel: str) -> tuple[Any]:
        from ..engine.images import load_mask_file

        path = self._path(image)
        if not path.is_file():
            raise FileNotFoundError(f"LoadImageMask: {image!r} is not in the input folder "
                                    f"{self.engine.folders.input}")
        return (load_mask_file(path, channel),)


class LoadImageOutput(LoadImage):
    """Loads an image from the output folder (a result of an earlier run), with its alpha as a mask."""

    DISPLAY, CATEGORY = "Load Image (from Outputs)", "image"
    # ComfyUI's frontend fills this combo from /internal/files/output; any name passes validation here and
    # the node checks the file when it runs
    INPUTS = {"image": ["COMBO", {"tooltip": "Image file in the output folder ('name.png [output]').",
                                  "image_upload": True, "image_folder": "output",
                                  "remote": {"route": "/internal/files/output", "refresh_button": True,
                                             "control_after_refresh": "first"}}]}
    FUNCTION = "load_image"

    def _path(self, image: str):
        # ComfyUI's frontend always sends "name.png [output]"; a bare name means the output folder too here
        # (ComfyUI itself would look in the input folder)
        return self.engine.folders.annotated_path(image, "output")

    def load_image(self, image: str) -> tuple[Any, Any]:
        from ..engine.images import load_image_file

        path = self._path(image)
        if not path.is_file():
            raise FileNotFoundError(f"LoadImageOutput: {image!r} is not in the output folder "
                                    f"{self.engine.folders.output}; give a file name from it, such as "
                                    "'ComfyUI_00001_.png [output]'")
        return load_image_file(path)

