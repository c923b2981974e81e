"""Engine fixtures: one Engine over the session's tiny demo checkpoint, shared by a test module."""

from __future__ import annotations

import pytest
import tiny_graphs

from comfykit import demo


@pytest.fixture(scope="module")
def engine(models_dir, tmp_path_factory):
    from comfykit.engine import Engine

    base = tmp_path_factory.mktemp("engine")
    eng = Engine(models_dir, output_dir=base / "output", input_dir=base / "input", temp_dir=base / "temp",
                 device="cpu", previews="latent2rgb")
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def ckpt_name(models_dir):
    return demo.ensure_demo_checkpoint(models_dir)


@pytest.fixture(scope="session")
def t2i_graph():
    """The t2i graph builder below, as a fixture (tests here are not a package)."""
    return t2i


def t2i(ckpt, *, steps=2, seed=42, text="a photo of a cat", sampler="euler", scheduler="normal", size=64,
        prefix="tiny_t2i", save=True):
    """ComfyUI's default text-to-image graph (node ids 3-9) at a tiny size."""
    return tiny_graphs.t2i(ckpt, steps=steps, seed=seed, text=text, sampler=sampler, scheduler=scheduler, size=size,
                           prefix=prefix, save=save)
