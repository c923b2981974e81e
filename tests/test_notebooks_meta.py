"""Structure checks for the example notebooks: badge, install cell, stripped outputs, python3 kernel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXPECTED = ["01_quickstart", "02_prompt_box", "03_server_backend", "04_import_and_convert",
            "05_sweeps_and_grids", "06_serve_and_share", "07_img2img_lora_hires", "08_scale_out",
            "09_flux_and_sd35"]
BADGE_URL = "https://colab.research.google.com/github/comfykit/comfykit/blob/main/notebooks/{name}.ipynb"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_all_example_notebooks_are_present():
    assert [p.stem for p in PATHS] == EXPECTED, "notebooks/ should hold exactly the numbered examples"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_opens_with_a_colab_badge_for_itself(path):
    first = _load(path)["cells"][0]
    assert first["cell_type"] == "markdown", f"{path.name}: the first cell should be the title with the badge"
    text = _source(first)
    assert text.startswith("# "), f"{path.name}: the first cell should start with a '# ' title"
    assert f"]({BADGE_URL.format(name=path.stem)})" in text, f"{path.name}: missing or wrong Colab badge link"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_first_code_cell_installs_only_when_comfykit_is_missing(path):
    src = _source(_code_cells(_load(path))[0])
    assert 'find_spec("comfykit") is None' in src, f"{path.name}: the install cell must look for comfykit"
    guarded = [line for line in src.splitlines() if "pip install" in line]
    assert guarded, f"{path.name}: the first code cell should %pip install comfykit"
    assert all(line.startswith("    %pip install") for line in guarded), \
        f"{path.name}: every pip install must sit inside the 'if ... is None' block so CI needs no network"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_outputs_are_stripped(path):
    for i, cell in enumerate(_code_cells(_load(path))):
        src = _source(cell)
        if "# NBVAL_CHECK_OUTPUT" in src:
            # nbval compares only cells stored as executed: these keep their expected text and nothing else
            assert cell["outputs"], f"{path.name} code cell {i}: a NBVAL_CHECK_OUTPUT cell needs its output"
            assert all(o["output_type"] == "stream" for o in cell["outputs"]), \
                f"{path.name} code cell {i}: expected outputs must be printed text (no images, no reprs)"
            continue
        fix = "run python notebooks/strip_outputs.py"
        assert cell["outputs"] == [], f"{path.name} code cell {i} has stored outputs; {fix}"
        assert cell["execution_count"] is None, f"{path.name} code cell {i} has an execution_count; {fix}"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_kernelspec_is_python3(path):
    nb = _load(path)
    assert nb["nbformat"] == 4
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_writes_only_under_out_and_skips_the_network_cells(path):
    text = "\n".join(_source(c) for c in _code_cells(_load(path)))
    assert 'WORK = Path("_out")' in text, f"{path.name}: write under _out/ (gitignored), not the repo tree"
    for cell in _code_cells(_load(path)):
        src = _source(cell)
        if "ck.share(" in src or "ngrok" in src.lower():
            assert src.startswith("# NBVAL_SKIP"), f"{path.name}: a share cell needs a token: NBVAL_SKIP it"


def _share_cells() -> tuple[str, str]:
    cells = _code_cells(_load(NOTEBOOKS / "06_serve_and_share.ipynb"))
    share = next(i for i, c in enumerate(cells) if "ck.share(" in _source(c))
    return _source(cells[share]), _source(cells[share + 1])


def test_the_share_cells_skip_cleanly_without_a_token(monkeypatch, capsys):
    import comfykit as ck

    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    calls = []
    namespace = {"ck": ck, "server": object()}
    monkeypatch.setattr(ck, "share", lambda *a, **k: calls.append(a), raising=False)
    share, close = _share_cells()
    exec(compile(share, "06-share", "exec"), namespace)  # Run All must get past it to server.stop()
    exec(compile(close, "06-close", "exec"), namespace)
    assert namespace["link"] is None and calls == []
    assert "Skipping the share" in capsys.readouterr().out
