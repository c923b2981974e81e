"""Every node in one graph on tiny models, and the engine's behaviour on bad input, OOM and interrupts."""

from __future__ import annotations

import json
import threading

import pytest
from PIL import Image

from comfykit import demo
from comfykit.errors import ExecutionError, InterruptedError, ValidationError


@pytest.fixture(scope="module")
def rich(models_dir, tmp_path_factory):
    """An engine whose models folder also holds a VAE, a LoRA, a corrupt and a wrong-type checkpoint."""
    from comfykit.engine import Engine

    base = tmp_path_factory.mktemp("rich")
    models = base / "models"
    (models / "checkpoints").mkdir(parents=True)
    ckpt = demo.ensure_demo_checkpoint(models_dir)
    (models / "checkpoints" / ckpt).symlink_to(models_dir / "checkpoints" / ckpt)
    demo.make_vae(models / "vae" / "tiny-vae.safetensors")
    demo.make_lora(models / "loras" / "tiny-lora.safetensors", models_dir / "checkpoints" / ckpt)
    (models / "checkpoints" / "broken.safetensors").write_bytes(b"\xff" * 64)
    demo.make_vae(models / "checkpoints" / "just-a-vae.safetensors")
    (base / "input").mkdir()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(base / "input" / "red.png")
    eng = Engine(models, output_dir=base / "output", input_dir=base / "input", temp_dir=base / "temp",
                 device="cpu", previews="none")
    eng.ckpt = ckpt
    yield eng
    eng.shutdown()


def all_nodes(ckpt):
    n = lambda cls, **inputs: {"class_type": cls, "inputs": inputs}  # noqa: E731
    return {
        "4": n("CheckpointLoaderSimple", ckpt_name=ckpt),
        "10": n("VAELoader", vae_name="tiny-vae.safetensors"),
        "11": n("LoraLoader", model=["4", 0], clip=["4", 1], lora_name="tiny-lora.safetensors",
                strength_model=0.5, strength_clip=0.5),
        "12": n("LoraLoaderModelOnly", model=["11", 0], lora_name="tiny-lora.safetensors", strength_model=0.3),
        "13": n("CLIPSetLastLayer", clip=["11", 1], stop_at_clip_layer=-2),
        "6": n("CLIPTextEncode", clip=["13", 0], text="a (cat:1.2)"),
        "14": n("CLIPTextEncode", clip=["13", 0], text="a dog"),
        "15": n("ConditioningSetArea", conditioning=["14", 0], width=64, height=64, x=0, y=0, strength=0.8),
        "16": n("ConditioningCombine", conditioning_1=["6", 0], conditioning_2=["15", 0]),
        "7": n("CLIPTextEncode", clip=["13", 0], text="blurry"),
        "5": n("EmptyLatentImage", width=64, height=64, batch_size=2),
        "3": n("KSampler", model=["12", 0], seed=3, steps=2, cfg=6.0, sampler_name="euler", scheduler="karras",
               positive=["16", 0], negative=["7", 0], latent_image=["5", 0], denoise=1.0),
        "8": n("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": n("SaveImage", images=["8", 0], filename_prefix="all/nodes"),
        "20": n("LoadImage", image="red.png"),
        "21": n("ImageScale", image=["20", 0], upscale_method="bicubic", width=64, height=64, crop="center"),
        "22": n("VAEEncode", pixels=["21", 0], vae=["10", 0]),
        "26": n("LatentUpscaleBy", samples=["22", 0], upscale_method="bislerp", scale_by=1.5),
        "23": n("LatentUpscale", samples=["26", 0], upscale_method="area", width=64, height=64, crop="disabled"),
        "24": n("KSamplerAdvanced", model=["4", 0], add_noise="enable", noise_seed=5, steps=3, cfg=5.0,
                sampler_name="euler_ancestral", scheduler="normal", positive=["6", 0], negative=["7", 0],
                latent_image=["23", 0], start_at_step=1, end_at_step=10000, return_with_leftover_noise="disable"),
        "27": n("VAEDecode", samples=["24", 0], vae=["10", 0]),
        "28": n("PreviewImage", images=["27", 0]),
    }


def test_every_node_in_one_graph(rich):
    r = rich.execute(all_nodes(rich.ckpt), prompt_id="all", extra_data={"extra_pnginfo": {"workflow": {"x": 1}}})
    assert r.ok, r.error
    assert set(r.executed) == set(all_nodes(rich.ckpt))
    assert [im.size for im in r.images_by_node["9"]] == [(64, 64), (64, 64)]
    assert [im.size for im in r.images_by_node["28"]] == [(64, 64)]
    assert [ref["filename"] for ref in r.outputs["9"]["images"]] == ["nodes_00001_.png", "nodes_00002_.png"]
    with Image.open(r.files[0]) as im:
        assert json.loads(im.text["prompt"])["3"]["inputs"]["seed"] == 3
    assert json.loads(Image.open(r.files[0]).text["workflow"]) == {"x": 1}
    # KSamplerAdvanced from step 1 of 3: two progress steps
    assert [e.data["value"] for e in r.events if e.type == "progress" and e.data["node"] == "24"] == [1, 2]
    assert all(e.preview is None for e in r.events)  # previews="none"


def test_lora_at_zero_strength_is_a_passthrough(rich):
    from comfykit.nodes import LoraLoader

    node = LoraLoader(rich)
    model, clip = object(), object()
    assert node.load_lora(model, clip, "tiny-lora.safetensors", 0.0, 0.0) == (model, clip)


def test_missing_checkpoint_is_value_not_in_list(rich, t2i_graph):
    with pytest.raises(ValidationError) as err:
        rich.execute(t2i_graph("nope.safetensors"), prompt_id="x")
    assert err.value.node_errors["4"]["errors"][0]["type"] == "value_not_in_list"
    with pytest.raises(ValidationError):
        rich.run(t2i_graph("nope.safetensors"))


def test_corrupt_checkpoint_is_an_execution_error_and_engine_recovers(rich, t2i_graph, reference_dir):
    golden = json.loads((reference_dir / "errors" / "runtime_error_broken_ckpt.json").read_text())
    r = rich.execute(t2i_graph("broken.safetensors", save=False), prompt_id="broken")
    assert r.status == "error" and isinstance(r.error, ExecutionError)
    want = [t for t in golden["message_types"] if t not in ("status", "progress_state")][:-1]
    assert [e.type for e in r.events] == want
    data = r.events[-1].data
    assert list(data) == list(next(m for m in golden["messages"] if m["type"] == "execution_error")["data"])
    assert data["node_id"] == "4" and data["node_type"] == "CheckpointLoaderSimple"
    assert data["exception_type"] == "comfykit.errors.ModelError"
    assert "broken.safetensors" in data["exception_message"]
    assert data["current_inputs"] == {"ckpt_name": ["broken.safetensors"]}
    with pytest.raises(ExecutionError, match="ModelError"):
        rich.run(t2i_graph("broken.safetensors", save=False))
    assert rich.execute(t2i_graph(rich.ckpt, save=False), prompt_id="fine").ok


def test_wrong_model_type_names_the_problem(rich, t2i_graph):
    r = rich.execute(t2i_graph("just-a-vae.safetensors", save=False), prompt_id="vae-as-ckpt")
    assert r.status == "error" and r.error.exception_type == "comfykit.errors.ModelError"
    assert "just-a-vae.safetensors" in r.error.exception_message


def test_memory_error_frees_models_and_next_run_works(rich, t2i_graph, monkeypatch):
    from comfykit.nodes import sampling

    rich.execute(t2i_graph(rich.ckpt, save=False), prompt_id="warm")
    assert rich.models.loaded()

    def boom(self, vae, samples):
        raise MemoryError("simulated out of memory")

    monkeypatch.setattr(sampling.VAEDecode, "decode", boom)
    r = rich.execute(t2i_graph(rich.ckpt, seed=99, save=False), prompt_id="oom")
    assert r.status == "error" and r.error.exception_type == "MemoryError" and r.error.node_id == "8"
    assert rich.models.loaded() == []
    monkeypatch.undo()
    assert rich.execute(t2i_graph(rich.ckpt, seed=99, save=False), prompt_id="after").ok


def test_interrupt_from_another_thread_stops_within_a_step(rich, t2i_graph):
    seen = []
    first = threading.Event()

    def on_event(e):
        if e.type == "progress":
            seen.append(e.data["value"])
            first.set()

    job = rich.submit(t2i_graph(rich.ckpt, steps=200, seed=11, save=False), on_event=on_event)
    assert first.wait(120)
    at_interrupt = len(seen)
    job.interrupt()
    with pytest.raises(InterruptedError) as err:
        job.result(120)
    assert len(seen) <= at_interrupt + 1
    assert err.value.node_id == "3" and err.value.node_type == "KSampler"
    events = list(job)
    assert events[-1].type == "execution_interrupted"
    assert list(events[-1].data) == ["prompt_id", "node_id", "node_type", "executed", "timestamp"]
    assert rich.run(t2i_graph(rich.ckpt, save=False)).ok


def test_interrupting_a_queued_job_cancels_it(rich, t2i_graph):
    started = threading.Event()
    blocker = rich.submit(t2i_graph(rich.ckpt, steps=50, seed=12, save=False),
                          on_event=lambda e: started.set() if e.type == "progress" else None)
    queued = rich.submit(t2i_graph(rich.ckpt, steps=2, seed=13, save=False))
    assert started.wait(120)
    queued.interrupt()
    blocker.interrupt()
    with pytest.raises(InterruptedError):
        blocker.result(120)
    with pytest.raises(InterruptedError):
        queued.result(120)
    assert rich.run(t2i_graph(rich.ckpt, save=False)).ok


def test_submit_refuses_a_graph_with_an_invalid_output(rich):
    g = all_nodes(rich.ckpt)
    g["15"]["inputs"]["width"] = 32  # below ConditioningSetArea's minimum of 64: output 9 cannot run
    with pytest.raises(ValidationError, match="15"):
        rich.submit(g)


def test_partial_outputs_run_only_what_they_need(rich):
    g = all_nodes(rich.ckpt)
    r = rich.execute(g, prompt_id="partial", outputs=["28"])
    assert "9" not in r.executed and "3" not in r.executed and list(r.outputs) == ["28"]
