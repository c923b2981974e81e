"""Engine(compile=...): compiled once per network, through cache hits and LoRA changes; eager when it cannot be."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import tiny_graphs

torch = pytest.importorskip("torch")

from comfykit import demo  # noqa: E402
from comfykit.engine import Engine  # noqa: E402
from comfykit.engine.compile import compile_options, to_channels_last  # noqa: E402
from comfykit.engine.models.manager import ModelManager  # noqa: E402
from comfykit.engine.models.offload import model_bytes  # noqa: E402


class CountingBackend:
    """A torch.compile backend that counts the graphs dynamo hands it and runs them as traced (eagerly)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


class FailingBackend:
    """A backend that fails like inductor without a C++ compiler."""

    def __init__(self):
        self.calls = 0

    def __call__(self, gm, example_inputs):
        self.calls += 1
        raise RuntimeError("no working C++ compiler found")


@pytest.fixture(scope="module")
def lora_models(models_dir, ckpt_name):
    (models_dir / "loras").mkdir(exist_ok=True)
    demo.make_lora(models_dir / "loras" / "compile-lora.safetensors", models_dir / "checkpoints" / ckpt_name)
    return models_dir


def _engine(models_dir, tmp_path, **kwargs):
    return Engine(models_dir, output_dir=tmp_path / "out", input_dir=tmp_path / "in", temp_dir=tmp_path / "tmp",
                  device="cpu", previews="none", **kwargs)


def _with_lora(graph, strength):
    graph = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in graph.items()}
    graph["10"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["4", 0], "strength_model": strength,
                                                                  "lora_name": "compile-lora.safetensors"}}
    graph["3"]["inputs"]["model"] = ["10", 0]
    return graph


def _pixels(result):
    return np.asarray(result.images[0], dtype=np.int16)


def _runs(engine, ckpt):
    """A run, a cache hit of the loader with a new seed, and two LoRA strengths: four sampled images."""
    base = tiny_graphs.t2i(ckpt, save=False)
    reseeded = tiny_graphs.t2i(ckpt, seed=7, save=False)
    return [_pixels(engine.run(g)) for g in (base, reseeded, _with_lora(base, 0.5), _with_lora(base, 0.9))]


@pytest.mark.slow  # dynamo traces the tiny UNet: 5-40 s on 2 busy cores
def test_compiled_once_through_cache_hits_and_lora_changes(lora_models, ckpt_name, tmp_path):
    backend = CountingBackend()
    # channels-last too: LoRA's patched weights keep the base's layout, which the graph's guards check
    compiled = _engine(lora_models, tmp_path, compile={"backend": backend}, channels_last=True)
    eager = _engine(lora_models, tmp_path)
    got, want = _runs(compiled, ckpt_name), _runs(eager, ckpt_name)
    assert backend.graphs == 1  # one graph for the base model, its cache hit and both LoRA clones
    assert compiled.models.compiler.failed == {}
    for a, b in zip(got, want):
        assert np.abs(a - b).max() <= 1  # the same picture (uint8 rounding of equal floats)
    assert np.abs(got[2] - got[0]).max() > 0 and np.abs(got[3] - got[2]).max() > 0  # the LoRA did change it


@pytest.mark.slow  # dynamo traces the tiny UNet: 5-40 s on 2 busy cores
def test_aot_compiled_model_matches_eager_within_1e4_across_sizes(models_dir, ckpt_name):
    from comfykit.engine.sampling.ksampler import common_ksampler

    manager = ModelManager("cpu", compile={"backend": "aot_eager"})
    model, clip, _ = manager.load_checkpoint(models_dir / "checkpoints" / ckpt_name)
    positive, negative = ([[cond, {"pooled_output": pooled}]] for cond, pooled in map(clip.encode, ("a cat", "blurry")))
    eager = model.clone()
    eager.compiled = None
    for size in (8, 12):  # a new resolution: marked dynamic, no error and the same numbers
        latent = {"samples": torch.zeros(1, 4, size, size)}
        outs = [common_ksampler(m, 1, 2, 7.0, "euler", "normal", positive, negative, latent)["samples"]
                for m in (model, eager)]
        assert (outs[0] - outs[1]).abs().max() < 1e-4


@pytest.mark.slow  # dynamo traces the tiny UNet: 5-40 s on 2 busy cores
def test_a_failed_compile_warns_once_and_runs_eagerly(models_dir, ckpt_name, tmp_path):
    backend = FailingBackend()
    engine = _engine(models_dir, tmp_path, compile={"backend": backend})
    graph = tiny_graphs.t2i(ckpt_name, save=False)
    with pytest.warns(UserWarning, match="runs eagerly from now on"):
        first = _pixels(engine.run(graph))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = _pixels(engine.run(tiny_graphs.t2i(ckpt_name, seed=5, save=False)))
    assert backend.calls == 1 and "UNetModel" in engine.models.compiler.failed
    eager = _engine(models_dir, tmp_path)
    assert np.array_equal(first, _pixels(eager.run(graph)))
    assert np.array_equal(second, _pixels(eager.run(tiny_graphs.t2i(ckpt_name, seed=5, save=False))))


def test_a_streamed_model_runs_eagerly_with_a_warning(models_dir, ckpt_name, tmp_path):
    path = models_dir / "checkpoints" / ckpt_name
    model, _, _ = ModelManager("cpu").load_checkpoint(path)
    budget = model_bytes(model) / 3  # a third of the UNet fits
    backend = CountingBackend()
    engine = _engine(models_dir, tmp_path, compile={"backend": backend}, vram_budget=budget / 2**30)
    with pytest.warns(UserWarning, match="partially loaded"):
        got = _pixels(engine.run(tiny_graphs.t2i(ckpt_name, save=False)))
    assert ("partial", f"DiffusionModel({ckpt_name})") in engine.models.events
    assert backend.graphs == 0 and engine.models.compiler.eager_calls > 0
    want = _pixels(_engine(models_dir, tmp_path).run(tiny_graphs.t2i(ckpt_name, save=False)))
    assert np.array_equal(got, want)


def test_compile_option_forms():
    assert compile_options(False) is None and compile_options(None) is None
    assert compile_options(True) == {} and compile_options("default") == {}
    assert compile_options("max-autotune") == {"mode": "max-autotune"}
    assert compile_options({"backend": "aot_eager", "dynamic": True}) == {"backend": "aot_eager", "dynamic": True}
    with pytest.raises(ValueError, match="not a torch.compile mode"):
        Engine(compile="fast")
    with pytest.raises(ValueError, match="takes no speed"):
        Engine(compile={"speed": 2})


def test_channels_last_gives_the_same_image(models_dir, ckpt_name, tmp_path):
    engine = _engine(models_dir, tmp_path, channels_last=True)
    graph = tiny_graphs.t2i(ckpt_name, save=False)
    got = _pixels(engine.run(graph))
    model, _, vae = engine.models.load_checkpoint(models_dir / "checkpoints" / ckpt_name)
    convs = [p for m in (model.network, vae.module) for p in m.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    want = _pixels(_engine(models_dir, tmp_path).run(graph))
    assert np.abs(got - want).max() <= 1


def test_to_channels_last_keeps_the_parameter_objects():
    conv = torch.nn.Conv2d(4, 8, 3)
    weight = conv.weight
    to_channels_last(conv)
    assert conv.weight is weight and weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_inductor_compiles_the_unet_on_cpu(models_dir, ckpt_name, tmp_path):
    """The default backend end to end (needs a C++ compiler; without one this checks the eager fallback)."""
    engine = _engine(models_dir, tmp_path, compile=True)
    graph = tiny_graphs.t2i(ckpt_name, save=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no compiler: the fallback warning
        got = _pixels(engine.run(graph))
    want = _pixels(_engine(models_dir, tmp_path).run(graph))
    assert np.abs(got - want).max() <= 2
    if shutil.which("g++") or shutil.which("c++"):  # inductor's CPU code needs one
        assert engine.models.compiler.failed == {}


def test_compile_and_channels_last_flags_reach_the_engine(monkeypatch):
    from comfykit import cli
    from comfykit.server.cli import engine_kwargs, parse_args

    kwargs = engine_kwargs(parse_args(["--compile", "--force-channels-last"]))
    assert kwargs["compile"] is True and kwargs["channels_last"] is True
    assert engine_kwargs(parse_args(["--compile-mode", "max-autotune"]))["compile"] == "max-autotune"
    assert "compile" not in engine_kwargs(parse_args([])) and "channels_last" not in engine_kwargs(parse_args([]))
    seen = {}

    class FakeEngine:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)

    import comfykit.engine

    monkeypatch.setattr(comfykit.engine, "Engine", FakeEngine, raising=False)
    cli._engine(cli._parser().parse_args(["generate", "x", "--compile", "--channels-last"]))
    assert seen["compile"] is True and seen["channels_last"] is True
    cli._engine(cli._parser().parse_args(["generate", "x"]))
    assert seen["compile"] is False and seen["channels_last"] is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inductor_and_channels_last_on_cuda_match_eager(models_dir, ckpt_name, tmp_path):
    """On a GPU: Triton-compiled, channels-last UNet and VAE give the eager picture."""
    engine = Engine(models_dir, output_dir=tmp_path / "o1", device="cuda", dtype="fp32", previews="none",
                    compile=True, channels_last=True)
    got = [_pixels(engine.run(tiny_graphs.t2i(ckpt_name, seed=s, save=False))) for s in (42, 7)]
    assert engine.models.compiler.failed == {}
    want = [_pixels(Engine(models_dir, output_dir=tmp_path / "o2", device="cuda", dtype="fp32",
                           previews="none").run(tiny_graphs.t2i(ckpt_name, seed=s, save=False))) for s in (42, 7)]
    for a, b in zip(got, want):
        assert np.abs(a - b).max() <= 2  # TF32/kernel choice noise only
