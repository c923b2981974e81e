"""ComfyUI's core node names (a shipped list), to tell a node the embedded engine lacks from a typo."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

_LIST = Path(__file__).with_name("comfy_nodes.txt")


@lru_cache(maxsize=1)
def core_nodes() -> frozenset[str]:
    """Class names of ComfyUI 0.3.64's core nodes (read once from ``comfy_nodes.txt``)."""
    lines = _LIST.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def unknown_node_hint(class_type: str, known: Iterable[str]) -> str:
    """What to say about a node class a schema lacks: not implemented here, or a did-you-mean ('' if neither)."""
    known = list(known)
    core = core_nodes()
    if class_type in core:
        # A ComfyUI server's schema has nearly every core node; the embedded engine's only a few dozen.
        if len(core.intersection(known)) < len(core) // 2:
            return (f"the embedded engine does not implement {class_type} yet; run it on a ComfyUI server with "
                    "ck.ComfyServer (ck.ComfyServer.launch('path/to/ComfyUI') or ck.ComfyServer.connect(url))")
        return f"{class_type} is a ComfyUI core node this server does not have; update its ComfyUI"
    close = difflib.get_close_matches(str(class_type), [str(k) for k in known], n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""
