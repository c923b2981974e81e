"""The custom-sampling nodes end to end on the tiny SD1 demo checkpoint: the same pixels as KSampler, previews,
denoised_output, guiders and the conditioning nodes FLUX/SD3 workflows put around them."""

from __future__ import annotations

import json

import pytest
import tiny_graphs

torch = pytest.importorskip("torch")


def _custom_advanced(ckpt: str, *, seed: int, steps: int, sampler: str, scheduler: str, cfg: float = 7.0,
                     denoise: float = 1.0) -> dict:
    """tiny_graphs.t2i with KSampler replaced by SamplerCustomAdvanced(RandomNoise, CFGGuider, KSamplerSelect,
    BasicScheduler), in API format as ComfyUI's frontend writes it."""
    g = tiny_graphs.t2i(ckpt, seed=seed, steps=steps, sampler=sampler, scheduler=scheduler, save=False)
    del g["3"]
    g.update({
        "10": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "11": {"class_type": "CFGGuider", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                     "cfg": cfg}},
        "12": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
        "13": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": scheduler, "steps": steps,
                                                          "denoise": denoise}},
        "14": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["10", 0], "guider": ["11", 0],
                                                                 "sampler": ["12", 0], "sigmas": ["13", 0],
                                                                 "latent_image": ["5", 0]}},
    })
    g["8"]["inputs"]["samples"] = ["14", 0]
    return g


def _pixels(result) -> bytes:
    return result.image.convert("RGB").tobytes()


@pytest.mark.parametrize("sampler,scheduler", [("euler_ancestral", "normal"), ("dpmpp_2m", "karras")])
def test_sampler_custom_advanced_gives_ksampler_pixels(engine, ckpt_name, sampler, scheduler):
    ksampler = engine.run(tiny_graphs.t2i(ckpt_name, seed=5, steps=3, sampler=sampler, scheduler=scheduler,
                                          save=False))
    workflow = json.loads(json.dumps(_custom_advanced(ckpt_name, seed=5, steps=3, sampler=sampler,
                                                      scheduler=scheduler)))  # a JSON file's round trip
    custom = engine.run(workflow)
    assert _pixels(custom) == _pixels(ksampler)


def test_sampler_custom_gives_ksampler_pixels_and_reports_progress(engine, ckpt_name):
    ksampler = engine.run(tiny_graphs.t2i(ckpt_name, seed=9, steps=2, save=False))
    g = _custom_advanced(ckpt_name, seed=9, steps=2, sampler="euler", scheduler="normal")
    for key in ("10", "11", "14"):
        del g[key]
    g["15"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["4", 0], "add_noise": True, "noise_seed": 9, "cfg": 7.0, "positive": ["6", 0],
        "negative": ["7", 0], "sampler": ["12", 0], "sigmas": ["13", 0], "latent_image": ["5", 0]}}
    g["8"]["inputs"]["samples"] = ["15", 0]
    custom = engine.run(g)
    assert _pixels(custom) == _pixels(ksampler)
    progress = [e.data for e in custom.events if e.type == "progress" and e.data["node"] == "15"]
    assert [(p["value"], p["max"]) for p in progress] == [(1, 2), (2, 2)]


def test_denoised_output_is_the_last_x0_prediction(engine, ckpt_name):
    g = _custom_advanced(ckpt_name, seed=3, steps=2, sampler="euler", scheduler="normal")
    g["8"]["inputs"]["samples"] = ["14", 1]
    denoised = engine.run(g)
    final = engine.run(_custom_advanced(ckpt_name, seed=3, steps=2, sampler="euler", scheduler="normal"))
    # euler's last step lands on sigma 0, where x is the last x0 prediction (up to rounding)
    a = torch.tensor(list(_pixels(denoised)), dtype=torch.int16)
    b = torch.tensor(list(_pixels(final)), dtype=torch.int16)
    assert int((a - b).abs().max()) <= 1
    g["13"]["inputs"]["steps"] = 3
    g["13"]["inputs"]["denoise"] = 0.0  # no sigmas: both outputs are the input latent
    assert engine.run(g).image.size == (64, 64)


def test_guiders_and_conditioning_nodes_in_a_flux_style_graph(engine, ckpt_name):
    """BasicGuider + FluxGuidance + ModelSamplingSD3 + ConditioningZeroOut + timestep range: the graph runs and
    BasicGuider gives CFGGuider's image at cfg 1."""
    g = _custom_advanced(ckpt_name, seed=1, steps=2, sampler="euler", scheduler="simple", cfg=1.0)
    cfg1 = engine.run(g)
    g["20"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": 3.5}}
    g["11"] = {"class_type": "BasicGuider", "inputs": {"model": ["4", 0], "conditioning": ["20", 0]}}
    assert _pixels(engine.run(g)) == _pixels(cfg1)  # an SD1 UNet reads no guidance

    g["21"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["7", 0]}}
    g["22"] = {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["6", 0], "start": 0.0,
                                                                        "end": 0.5}}
    g["23"] = {"class_type": "DualCFGGuider", "inputs": {
        "model": ["24", 0], "cond1": ["22", 0], "cond2": ["6", 0], "negative": ["21", 0], "cfg_conds": 2.0,
        "cfg_cond2_negative": 4.0, "style": "nested"}}
    g["24"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["4", 0], "shift": 3.0}}
    g["25"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    g["14"]["inputs"].update(guider=["23", 0], latent_image=["25", 0])
    g["13"]["inputs"]["model"] = ["24", 0]
    result = engine.run(g)  # the 16-channel empty latent is narrowed to the SD1 model's 4 channels
    assert result.status == "success" and result.image.size == (64, 64)
    assert _pixels(result) != _pixels(cfg1)


def test_comfyui_sdxl_turbo_template_runs(tmp_path):
    """ComfyUI's own sdxlturbo_example template (SamplerCustom, KSamplerSelect, SDTurboScheduler) on a tiny SDXL
    checkpoint saved under the file name the template asks for."""
    from importlib import resources

    pytest.importorskip("comfyui_workflow_templates_json")
    import comfykit as ck
    from comfykit import demo
    from comfykit.engine import Engine

    template = resources.files("comfyui_workflow_templates_json") / "templates" / "sdxlturbo_example.json"
    wf = ck.Workflow.load(json.loads(template.read_text()))
    prompt = wf.to_api()
    ckpt = next(n["inputs"]["ckpt_name"] for n in prompt.values() if n["class_type"] == "CheckpointLoaderSimple")
    demo.make_checkpoint(tmp_path / "models" / "checkpoints" / ckpt, arch="sdxl", seed=1)
    for node in prompt.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
    eng = Engine(tmp_path / "models", output_dir=tmp_path / "out", input_dir=tmp_path / "in",
                 temp_dir=tmp_path / "tmp", device="cpu", previews="latent2rgb")
    try:
        result = eng.run(prompt, on_event=lambda event: None, keep_previews=True)  # a listener: previews on
    finally:
        eng.shutdown()
    assert result.status == "success" and result.image.size == (64, 64) and result.files
    sampler_id = next(k for k, n in prompt.items() if n["class_type"] == "SamplerCustom")
    progress = [e for e in result.events if e.type == "progress" and e.data["node"] == sampler_id]
    assert [(e.data["value"], e.data["max"]) for e in progress] == [(1, 1)] and progress[0].preview is not None
