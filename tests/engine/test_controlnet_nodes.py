"""ControlNet nodes through the engine: an SD1.5 workflow with ControlNetLoader + ControlNetApplyAdvanced."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from comfykit import demo


@pytest.fixture(scope="module")
def cnet_engine(models_dir, tmp_path_factory):
    """An engine whose models folder holds the demo checkpoint, two tiny ControlNets and a file that is not one."""
    from comfykit.engine import Engine

    base = tmp_path_factory.mktemp("cnet_engine")
    models = base / "models"
    (models / "checkpoints").mkdir(parents=True)
    ckpt = demo.ensure_demo_checkpoint(models_dir)
    (models / "checkpoints" / ckpt).symlink_to(models_dir / "checkpoints" / ckpt)
    demo.make_controlnet(models / "controlnet" / "control_tiny_openpose.pth", layout="ldm-pth", seed=1)
    demo.make_controlnet(models / "controlnet" / "tiny_depth", layout="diffusers-folder", seed=2)
    demo.make_vae(models / "controlnet" / "not_a_controlnet.safetensors")
    (base / "input").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(base / "input" / "pose.png")
    eng = Engine(models, output_dir=base / "output", input_dir=base / "input", temp_dir=base / "temp",
                 device="cpu", previews="none")
    eng.ckpt = ckpt
    yield eng
    eng.shutdown()


def controlnet_graph(ckpt, strength=0.9, second=1.0, cnet="control_tiny_openpose.pth"):
    n = lambda cls, **inputs: {"class_type": cls, "inputs": inputs}  # noqa: E731
    return {
        "4": n("CheckpointLoaderSimple", ckpt_name=ckpt),
        "6": n("CLIPTextEncode", clip=["4", 1], text="a dancer"),
        "7": n("CLIPTextEncode", clip=["4", 1], text="blurry"),
        "10": n("LoadImage", image="pose.png"),
        "11": n("ControlNetLoader", control_net_name=cnet),
        "12": n("ControlNetApplyAdvanced", positive=["6", 0], negative=["7", 0], control_net=["11", 0],
                image=["10", 0], strength=strength, start_percent=0.0, end_percent=0.8),
        "13": n("DiffControlNetLoader", model=["4", 0],
                control_net_name="tiny_depth/diffusion_pytorch_model.safetensors"),
        "14": n("ControlNetApplyAdvanced", positive=["12", 0], negative=["12", 1], control_net=["13", 0],
                image=["10", 0], strength=second, start_percent=0.0, end_percent=1.0, vae=["4", 2]),
        "5": n("EmptyLatentImage", width=64, height=64, batch_size=1),
        "3": n("KSampler", model=["4", 0], seed=3, steps=2, cfg=6.0, sampler_name="euler", scheduler="normal",
               positive=["14", 0], negative=["14", 1], latent_image=["5", 0], denoise=1.0),
        "8": n("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": n("PreviewImage", images=["8", 0]),
    }


def test_sd15_controlnet_workflow_runs_end_to_end(cnet_engine):
    assert "control_tiny_openpose.pth" in cnet_engine.folders.list_files("controlnet")
    info = cnet_engine.object_info()["ControlNetLoader"]["input"]["required"]["control_net_name"][0]
    assert "tiny_depth/diffusion_pytorch_model.safetensors" in info
    controlled = cnet_engine.execute(controlnet_graph(cnet_engine.ckpt), prompt_id="cn")
    assert controlled.ok, controlled.error
    plain = cnet_engine.execute(controlnet_graph(cnet_engine.ckpt, strength=0.0, second=0.0), prompt_id="plain")
    assert plain.ok, plain.error
    a, b = (np.asarray(r.images_by_node["9"][0], dtype=np.int16) for r in (controlled, plain))
    assert a.shape == (64, 64, 3) and np.abs(a - b).max() > 0


def test_a_file_that_is_not_a_controlnet_fails_naming_it(cnet_engine):
    result = cnet_engine.execute(controlnet_graph(cnet_engine.ckpt, cnet="not_a_controlnet.safetensors"),
                                 prompt_id="bad")
    assert result.status == "error"
    message = result.error.data["exception_message"]
    assert "not_a_controlnet.safetensors: not a ControlNet" in message and "VAE" in message
