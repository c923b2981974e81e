"""Strip outputs from the example notebooks, keeping the expected text of NBVAL_CHECK_OUTPUT cells.

    python notebooks/strip_outputs.py            # every notebook here
    python notebooks/strip_outputs.py 01_quickstart.ipynb
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def strip(path: Path) -> bool:
    """Remove outputs and execution counts, except the text nbval compares; True when the file changed."""
    before = path.read_text(encoding="utf-8")
    nb = json.loads(before)
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if "# NBVAL_CHECK_OUTPUT" in source:
            # nbval compares only cells stored as executed, so these keep a count and their printed text
            cell["outputs"] = [o for o in cell["outputs"]
                               if o["output_type"] == "stream" and o["name"] == "stdout"]
            cell["execution_count"] = 1
        else:
            cell["outputs"], cell["execution_count"] = [], None
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in ("tags", "id")}
    meta = nb.setdefault("metadata", {})
    meta.pop("widgets", None)  # saved widget state: large and different on every run
    if "language_info" in meta:
        meta["language_info"] = {"name": meta["language_info"].get("name", "python")}
    after = json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"  # as Jupyter saves
    if after != before:
        path.write_text(after, encoding="utf-8")
    return after != before


if __name__ == "__main__":
    paths = [Path(a) if Path(a).exists() else HERE / a for a in sys.argv[1:]]
    paths = paths or sorted(HERE.glob("*.ipynb"))
    for p in paths:
        print(("stripped " if strip(p) else "clean    ") + p.name)
