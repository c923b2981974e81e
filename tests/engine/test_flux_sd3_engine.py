"""FLUX.1 and SD3.5 through the engine: the file layouts users download, fp8 storage, previews, bad files."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from comfykit import demo  # noqa: E402
from comfykit.errors import ExecutionError  # noqa: E402


@pytest.fixture(scope="module")
def dit_engine(tmp_path_factory):
    from comfykit.engine import Engine

    base = tmp_path_factory.mktemp("dit")
    models = base / "models"
    demo.make_dit_checkpoint(models / "checkpoints" / "flux1-schnell-fp8.safetensors", "flux")
    demo.make_dit_checkpoint(models / "checkpoints" / "sd3.5_medium.safetensors", "sd3", text_encoders=False)
    demo.make_dit_checkpoint(models / "checkpoints" / "flux1-dev.safetensors", "flux-dev", vae=False,
                             text_encoders=False)
    demo.make_dit_files(models, "flux-dev", fp8=True)
    demo.make_dit_files(models, "sd3", names={"unet": "sd3-unused.safetensors", "vae": "sd3-vae.safetensors",
                                              "clip_l": "sd3_clip_l.safetensors", "clip_g": "sd3_clip_g.safetensors",
                                              "t5xxl": "sd3_t5xxl.safetensors"})
    eng = Engine(models, output_dir=base / "out", input_dir=base / "in", temp_dir=base / "tmp", device="cpu",
                 previews="latent2rgb")
    yield eng
    eng.shutdown()


def _t2i(loader: dict, clip: list, model: list, vae: list, *, cfg: float = 1.0, text_node: dict | None = None):
    encode = text_node or {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": clip}}
    return {
        "1": loader,
        "2": encode,
        "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": model, "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 1, "steps": 2, "cfg": cfg,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": vae}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def test_flux_all_in_one_checkpoint_with_16_channel_previews(dit_engine):
    graph = _t2i({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-schnell-fp8.safetensors"}},
                 ["1", 1], ["1", 0], ["1", 2])
    events = []
    result = dit_engine.run(graph, on_event=events.append)
    assert result.status == "success" and result.image.size == (64, 48)
    previews = [e.preview for e in events if e.type == "progress" and e.preview is not None]
    assert previews and previews[-1].size == (64, 48)  # latent2rgb of 16 channels, at the decoded size


def test_flux_dev_split_files_stay_fp8_on_the_device(dit_engine):
    graph = {
        "10": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors",
                                                      "weight_dtype": "default"}},
        "11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                          "clip_name2": "t5xxl_fp8_e4m3fn_scaled.safetensors",
                                                          "type": "flux"}},
        "12": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "13": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["2", 0], "guidance": 3.5}},
    }
    graph.update(_t2i({"class_type": "CLIPTextEncodeFlux", "inputs": {
        "clip": ["11", 0], "clip_l": "a fox", "t5xxl": "a red fox in the snow", "guidance": 3.5}},
        ["11", 0], ["10", 0], ["12", 0]))
    graph["2"] = graph.pop("1")
    graph["5"]["inputs"]["positive"] = ["13", 0]
    result = dit_engine.run(graph)
    assert result.status == "success" and result.image.size == (64, 48)
    model = next(v for k, v in dit_engine.models._loaded.items() if k[0] == "diffusion_model")
    linear = model.network.transformer.transformer_blocks[0].attn.to_q
    assert linear.weight.dtype == torch.float8_e4m3fn and model.dtype == torch.float32
    encoder = next(v for k, v in dit_engine.models._loaded.items() if k[0] == "text_encoders")
    assert any(p.dtype == torch.float8_e4m3fn for p in encoder.t5.parameters())  # the scaled-fp8 T5 stays fp8


def test_sd35_single_file_with_triple_clip_loader(dit_engine):
    graph = _t2i({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.5_medium.safetensors"}},
                 ["20", 0], ["1", 0], ["1", 2], cfg=4.0)
    graph["20"] = {"class_type": "TripleCLIPLoader", "inputs": {"clip_name1": "sd3_clip_l.safetensors",
                                                                "clip_name2": "sd3_clip_g.safetensors",
                                                                "clip_name3": "sd3_t5xxl.safetensors"}}
    result = dit_engine.run(graph)
    assert result.status == "success" and result.image.size == (64, 48)


def test_a_bare_flux_transformer_in_checkpoints_names_the_right_loaders(dit_engine):
    graph = _t2i({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-dev.safetensors"}},
                 ["1", 1], ["1", 0], ["1", 2])
    with pytest.raises(ExecutionError, match=r"flux1-dev.safetensors: a bare flux diffusion model.*UNETLoader"):
        dit_engine.run(graph)


def test_a_t5_given_as_clip_l_says_what_it_is(dit_engine):
    graph = _t2i({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-schnell-fp8.safetensors"}},
                 ["30", 0], ["1", 0], ["1", 2])
    graph["30"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "sd3_t5xxl.safetensors",
                                                          "type": "stable_diffusion"}}
    with pytest.raises(ExecutionError, match=r"sd3_t5xxl.safetensors.*T5"):
        dit_engine.run(graph)


@pytest.mark.parametrize("name", ["flux_schnell_txt2img", "flux_dev_txt2img", "sd35_txt2img"])
def test_shipped_flux_and_sd35_templates_run_on_tiny_models(name, tmp_path):
    from comfykit import templates
    from comfykit.engine import Engine

    prompt = templates.fill(name, prompt="a red fox", width=64, height=64, steps=2, seed=3)
    models = tmp_path / "models"
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            family = "sd3" if "sd3" in node["inputs"]["ckpt_name"] else "flux"
            demo.make_dit_checkpoint(models / "checkpoints" / node["inputs"]["ckpt_name"], family)
        if node["class_type"] == "UNETLoader":
            demo.make_dit_files(models, "flux-dev", fp8=True)
    engine = Engine(models, output_dir=tmp_path / "out", device="cpu", previews="none")
    try:
        result = engine.run(prompt)
    finally:
        engine.shutdown()
    assert result.status == "success" and result.image.size == (64, 64) and result.files


def test_taef1_previews_for_flux_when_the_decoder_is_in_vae_approx(tmp_path):
    from safetensors.torch import save_file

    from comfykit.engine import Engine
    from comfykit.engine.sampling.taesd import Decoder

    models = tmp_path / "models"
    demo.make_dit_checkpoint(models / "checkpoints" / "flux.safetensors", "flux")
    (models / "vae_approx").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in Decoder(latent_channels=16).state_dict().items()},
              str(models / "vae_approx" / "taef1_decoder.safetensors"))
    engine = Engine(models, output_dir=tmp_path / "out", device="cpu", previews="taesd")
    graph = _t2i({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux.safetensors"}},
                 ["1", 1], ["1", 0], ["1", 2])
    events = []
    try:
        assert engine.run(graph, on_event=events.append).status == "success"
        previewer = engine._previewer(engine.models.load_checkpoint(models / "checkpoints" / "flux.safetensors")[0])
    finally:
        engine.shutdown()
    assert previewer.method == "taesd"  # TAEF1 chosen for the Flux latent format, not latent2rgb
    previews = [e.preview for e in events if e.type == "progress" and e.preview is not None]
    assert previews and previews[-1].size == (64, 48)
