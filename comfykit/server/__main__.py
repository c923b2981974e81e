"""``python -m comfykit.server``: start the ComfyUI-compatible server (ComfyUI main.py's flags)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
