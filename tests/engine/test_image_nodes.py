"""Image and latent nodes on the real Engine (no models needed): LoadImage, SaveImage, PreviewImage, ImageScale,
EmptyLatentImage, LatentUpscale(By); plus submit/run/Job behaviour."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from comfykit.engine import Engine
from comfykit.errors import ValidationError
from comfykit.nodes.latent import EmptyLatentImage, LatentUpscale, LatentUpscaleBy


@pytest.fixture
def engine(tmp_path):
    (tmp_path / "input").mkdir()
    eng = Engine(tmp_path / "models", output_dir=tmp_path / "output", input_dir=tmp_path / "input",
                 temp_dir=tmp_path / "temp", device="cpu", previews="none")
    yield eng
    eng.shutdown()


def put_image(engine, name="in.png", size=(24, 16), mode="RGB", color=(255, 0, 0)):
    img = Image.new(mode, size, color)
    img.save(engine.folders.input / name)
    return name


def save_graph(image, prefix="ComfyUI", **scale):
    g = {"1": {"class_type": "LoadImage", "inputs": {"image": image}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}
    if scale:
        g["3"] = {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear",
                                                         "crop": "disabled", **scale}}
        g["2"]["inputs"]["images"] = ["3", 0]
    return g


def test_save_image_names_counter_subfolder_and_png_chunks(engine):
    name = put_image(engine)
    wf = {"nodes": [], "links": []}
    r = engine.execute(save_graph(name, "sub/pic"), prompt_id="p1", extra_data={"extra_pnginfo": {"workflow": wf}})
    assert r.status == "success", r.error
    assert r.outputs == {"2": {"images": [{"filename": "pic_00001_.png", "subfolder": "sub", "type": "output"}]}}
    path = engine.folders.output / "sub" / "pic_00001_.png"
    assert r.files == [path]
    with Image.open(path) as im:
        assert im.size == (24, 16)
        prompt = json.loads(im.text["prompt"])
        assert prompt["2"]["inputs"]["filename_prefix"] == "sub/pic"
        assert json.loads(im.text["workflow"]) == wf
    assert r.image.size == (24, 16) and r.images_by_node.keys() == {"2"}
    # the counter continues after the highest existing number
    (engine.folders.output / "sub" / "pic_00007_.png").write_bytes(b"")
    r2 = engine.execute(save_graph(name, "sub/pic", width=8, height=8), prompt_id="p2")
    assert r2.outputs["2"]["images"][0]["filename"] == "pic_00008_.png"


def test_save_image_substitutes_size_and_refuses_to_escape(engine):
    name = put_image(engine)
    r = engine.execute(save_graph(name, "img_%width%x%height%"), prompt_id="p")
    assert r.outputs["2"]["images"][0]["filename"] == "img_24x16_00001_.png"
    bad = engine.execute(save_graph(name, "../escape"), prompt_id="bad")
    assert bad.status == "error"
    assert bad.error.node_type == "SaveImage" and "outside the output folder" in bad.error.exception_message
    assert not (engine.folders.output.parent / "escape_00001_.png").exists()


def test_save_image_truncates_like_comfyui(engine, tmp_path):
    node = engine._executor.make_node(engine._executor.nodes["SaveImage"])
    images = torch.full((1, 2, 2, 3), 0.999)
    out = node.save_images(images, "trunc")
    assert np.asarray(out["images"][0])[0, 0, 0] == 254  # 255*0.999 = 254.7 truncated, diffusers would round


def test_preview_image_goes_to_temp_with_random_suffix(engine):
    name = put_image(engine)
    g = {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
         "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    r = engine.execute(g, prompt_id="p")
    ref = r.outputs["2"]["images"][0]
    assert ref["type"] == "temp" and ref["subfolder"] == ""
    assert ref["filename"].startswith("ComfyUI_temp_") and ref["filename"].endswith("_00001_.png")
    assert len(ref["filename"]) == len("ComfyUI_temp_abcde_00001_.png")
    assert (engine.folders.temp / ref["filename"]).is_file()


def test_load_image_mask_from_alpha_and_default_mask(engine):
    rgba = Image.new("RGBA", (8, 4), (10, 20, 30, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    rgba.save(engine.folders.input / "alpha.png")
    put_image(engine, "plain.png", (8, 4))
    node = engine._executor.make_node(engine._executor.nodes["LoadImage"])
    image, mask = node.load_image("alpha.png")
    assert image.shape == (1, 4, 8, 3) and image.dtype == torch.float32
    assert mask.shape == (1, 4, 8) and mask[0, 0, 0] == 0 and mask[0, 1, 1] == 1
    image, mask = node.load_image("plain.png")
    assert torch.allclose(image[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert mask.shape == (1, 64, 64) and mask.sum() == 0


def test_load_image_applies_exif_and_batches_frames(engine):
    img = Image.new("RGB", (8, 4), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(engine.folders.input / "rot.jpg", exif=exif)
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(engine.folders.input / "anim.gif", save_all=True, append_images=frames[1:])
    node = engine._executor.make_node(engine._executor.nodes["LoadImage"])
    assert node.load_image("rot.jpg")[0].shape == (1, 8, 4, 3)
    image, mask = node.load_image("anim.gif")
    assert image.shape[0] == 2


def test_load_image_reruns_when_the_file_changes(engine):
    name = put_image(engine)
    g = save_graph(name)
    engine.execute(g, prompt_id="a")
    assert engine.execute(g, prompt_id="b").executed == []
    put_image(engine, name, color=(0, 0, 255))
    assert engine.execute(g, prompt_id="c").executed == ["1", "2"]


def test_missing_input_file_is_a_validation_error(engine):
    with pytest.raises(ValidationError) as err:
        engine.execute(save_graph("nope.png"), prompt_id="x")
    errors = err.value.node_errors["1"]["errors"]
    # like ComfyUI: LoadImage's own VALIDATE_INPUTS replaces the combo check for `image`
    assert errors[0]["type"] == "custom_validation_failed" and "nope.png" in errors[0]["details"]


def test_image_scale_keeps_aspect_with_zero_side(engine):
    name = put_image(engine, size=(24, 16))
    r = engine.execute(save_graph(name, width=12, height=0), prompt_id="p")
    assert r.image.size == (12, 8)


def test_latent_nodes():
    lat = EmptyLatentImage().generate(64, 48, 2)[0]
    assert lat["samples"].shape == (2, 4, 6, 8) and lat["samples"].abs().sum() == 0
    up = LatentUpscale().upscale(lat, "nearest-exact", 128, 0, "disabled")[0]
    assert up["samples"].shape == (2, 4, 12, 16)
    small = LatentUpscale().upscale(lat, "bilinear", 16, 16, "center")[0]
    assert small["samples"].shape == (2, 4, 8, 8)  # each side at least 64 px
    by = LatentUpscaleBy().upscale({"samples": torch.randn(1, 4, 8, 8)}, "bislerp", 1.5)[0]
    assert by["samples"].shape == (1, 4, 12, 12)


def test_submit_job_events_and_run(engine):
    name = put_image(engine)
    seen = []
    job = engine.submit(save_graph(name), on_event=seen.append)
    events = list(job)
    result = job.result(30)
    assert [e.type for e in events] == [e.type for e in result.events] == [e.type for e in seen]
    assert events[0].type == "execution_start" and events[-1].type == "execution_success"
    assert result.ok and engine.run(save_graph(name)).executed == []
    with pytest.raises(ValidationError):
        engine.run(save_graph("missing.png"))


def test_object_info_lists_live_files(engine):
    assert engine.object_info()["LoadImage"]["input"]["required"]["image"][0] == []
    put_image(engine, "new.png")
    assert engine.object_info()["LoadImage"]["input"]["required"]["image"][0] == ["new.png"]
    stats = engine.system_stats()
    assert set(stats) == {"system", "devices"} and stats["devices"][0]["type"] == "cpu"


def test_folders_list_models_like_comfyui(tmp_path):
    from comfykit.engine import Folders

    f = Folders(tmp_path / "models", output=tmp_path / "o", input=tmp_path / "i", temp=tmp_path / "t")
    for rel in ("checkpoints/b.safetensors", "checkpoints/sub/a.ckpt", "checkpoints/notes.txt", "loras/x.pt"):
        (f.models / rel).parent.mkdir(parents=True, exist_ok=True)
        (f.models / rel).write_bytes(b"")
    assert f.list_files("checkpoints") == ["b.safetensors", "sub/a.ckpt"]
    assert f.files()["loras"] == ["x.pt"] and f.files()["vae"] == []
    assert f.get_full_path("checkpoints", "sub/a.ckpt") == f.models / "checkpoints" / "sub" / "a.ckpt"
    with pytest.raises(ValueError, match="not inside"):
        f.get_full_path("checkpoints", "../loras/x.pt")
    with pytest.raises(FileNotFoundError, match="b.safetensors"):
        f.get_full_path("checkpoints", "missing.safetensors")
    with pytest.raises(ValueError, match="unknown folder"):
        f.list_files("upscalers")


@pytest.mark.parametrize("mode, reruns", [("lru", []), ("none", ["1", "2"])])
def test_engine_cache_modes(tmp_path, mode, reruns):
    eng = Engine(tmp_path / "m", output_dir=tmp_path / "o", input_dir=tmp_path / "i", temp_dir=tmp_path / "t",
                 device="cpu", cache=mode, cache_size=10)
    (tmp_path / "i").mkdir()
    put_image(eng, "a.png")
    put_image(eng, "b.png", color=(0, 9, 9))
    eng.execute(save_graph("a.png"), prompt_id="a")
    eng.execute(save_graph("b.png"), prompt_id="b")
    assert eng.execute(save_graph("a.png"), prompt_id="a2").executed == reruns


def test_bad_engine_options_are_clear(tmp_path):
    with pytest.raises(ValueError, match="cache mode"):
        Engine(tmp_path, cache="fifo")
    with pytest.raises(ValueError, match="preview mode"):
        Engine(tmp_path, previews="fast")


def test_workflow_objects_run_and_embed_their_ui_graph(engine):
    from comfykit.graph import Workflow

    put_image(engine, "w.png")
    wf = Workflow()
    image, _mask = wf.LoadImage(image="w.png")
    wf.SaveImage(images=image, filename_prefix="dsl")
    r = engine.run(wf)
    assert r.ok and r.outputs
    with Image.open(r.files[0]) as im:
        assert "nodes" in json.loads(im.text["workflow"])
