"""The ComfyUI server backend: launch or attach to a ComfyUI server and run workflows through it.

>>> import comfykit as ck
>>> srv = ck.ComfyServer.launch("/content/ComfyUI", args=["--cpu"])   # doctest: +SKIP
>>> result = srv.run(wf)                                             # doctest: +SKIP
"""

from __future__ import annotations

from .frames import BinaryFrame, decode_frame, encode_preview
from .server import ComfyServer

__all__ = ["BinaryFrame", "ComfyServer", "decode_frame", "encode_preview"]
