"""Upscale models: ESRGAN-family files in every key layout load into the built-in RRDBNet, equal an independent
forward, upscale in tiles as ComfyUI does, and files of other kinds are refused with what they look like."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from comfykit import demo  # noqa: E402
from comfykit.engine.models import rrdb  # noqa: E402
from comfykit.engine.models.upscale import (  # noqa: E402
    UpscaleModel,
    load_upscale_model,
    pick_tile,
    upscale_image,
)
from comfykit.errors import ModelError  # noqa: E402


def _reference(sd: dict, x: torch.Tensor, upsamples: int, unshuffle: int = 1, shuffle: bool = False) -> torch.Tensor:
    """RRDBNet written out with F.conv2d on BasicSR-named weights, as the ESRGAN paper draws it."""
    conv = lambda name, t: F.conv2d(t, sd[name + ".weight"], sd[name + ".bias"], padding=1)  # noqa: E731
    act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
    if unshuffle > 1:
        x = F.pixel_unshuffle(x, unshuffle)
    fea = conv("conv_first", x)
    trunk = fea
    blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    for b in range(blocks):
        block_in = trunk
        for r in (1, 2, 3):
            dense_in, feats = trunk, [trunk]
            for c in range(1, 5):
                feats.append(act(conv(f"body.{b}.rdb{r}.conv{c}", torch.cat(feats, 1))))
            trunk = conv(f"body.{b}.rdb{r}.conv5", torch.cat(feats, 1)) * 0.2 + dense_in
        trunk = trunk * 0.2 + block_in
    fea = fea + conv("conv_body", trunk)
    for i in range(upsamples):
        if shuffle:
            fea = act(F.pixel_shuffle(conv(f"conv_up{i + 1}", fea), 2))
        else:
            fea = act(conv(f"conv_up{i + 1}", F.interpolate(fea, scale_factor=2, mode="nearest")))
    return conv("conv_last", act(conv("conv_hr", fea)))


@pytest.mark.parametrize("scale,unshuffle,shuffle", [(4, 1, False), (2, 1, False), (8, 1, False), (1, 1, False),
                                                     (2, 2, False), (1, 4, False), (4, 1, True)],
                         ids=["x4", "x2", "x8", "x1", "realesrgan-x2plus", "realesrgan-x1", "pixelshuffle-x4"])
def test_every_key_layout_equals_a_reference_forward(tmp_path, scale, unshuffle, shuffle):
    upsamples = {1: 0, 2: 1, 4: 2, 8: 3}[scale * unshuffle]
    config = rrdb.RRDBConfig(features=16, growth=8, blocks=2, upsamples=upsamples, unshuffle=unshuffle,
                             pixel_shuffle=shuffle)
    new = rrdb.make_state_dict(config, layout="new", seed=3)
    old = rrdb.make_state_dict(config, layout="old", seed=3)
    assert "model.1.sub.0.RDB1.conv1.0.weight" in old and "conv_first.weight" in new
    torch.save(old, tmp_path / "esrgan_old.pth")  # the original repository's files are torch pickles
    from safetensors.torch import save_file

    save_file(new, str(tmp_path / "realesrgan_new.safetensors"))
    bsrgan = rrdb.make_state_dict(config, layout="bsrgan", seed=3)
    assert "RRDB_trunk.0.RDB1.conv1.weight" in bsrgan and "HRconv.weight" in bsrgan
    torch.save(bsrgan, tmp_path / "bsrgan.pth")
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    expected = _reference(new, x, upsamples, unshuffle, shuffle)
    assert expected.shape == (1, 3, 24 * scale, 20 * scale)
    for name in ("esrgan_old.pth", "realesrgan_new.safetensors", "bsrgan.pth"):
        model = load_upscale_model(tmp_path / name)
        assert model.scale == scale and rrdb.infer_config(rrdb.convert(new)) == config
        torch.testing.assert_close(model.network(x), expected, atol=1e-5, rtol=1e-5)
        # called as spandrel's descriptor calls a network: the output clamped to the image range
        torch.testing.assert_close(model(x), expected.clamp(0, 1), atol=1e-5, rtol=1e-5)


def test_shapes_are_read_off_the_file(tmp_path):
    path = demo.make_upscale_model(tmp_path / "4x-UltraSharp.pth", scale=4, layout="old", features=24, blocks=3,
                                   growth=12)
    model = load_upscale_model(path)
    assert (model.scale, model.architecture, model.network.config.blocks) == (4, "ESRGAN", 3)
    assert (model.network.config.features, model.network.config.growth) == (24, 12)
    gray = rrdb.make_state_dict(rrdb.RRDBConfig(in_channels=1, out_channels=1, features=8, growth=4, blocks=1))
    torch.save({"params_ema": gray}, tmp_path / "gray_x4.pth")  # Real-ESRGAN's training checkpoints wrap it
    model = load_upscale_model(tmp_path / "gray_x4.pth")
    assert (model.in_channels, model.out_channels, model.scale) == (1, 1, 4)
    assert upscale_image(model, torch.rand(1, 8, 8, 3)).shape == (1, 32, 32, 1)


def _tiny(scale: int = 4) -> UpscaleModel:
    config = rrdb.RRDBConfig(features=8, growth=4, blocks=1, upsamples={2: 1, 4: 2}[scale])
    net = rrdb.RRDBNet(config)
    net.load_state_dict(rrdb.make_state_dict(config, seed=1))
    return UpscaleModel(net, scale, "ESRGAN", features=8)


def _seams(size: int, tile: int, overlap: int, margin: int) -> torch.Tensor:
    """Input positions within ``margin`` of a tile edge that is not the image edge."""
    near = torch.zeros(size, dtype=torch.bool)
    for start in range(0, size - overlap, tile - overlap):
        start = max(0, min(size - overlap, start))
        for edge in (start, min(start + tile, size)):
            if 0 < edge < size:
                near[max(0, edge - margin):edge + margin] = True
    return near


def test_tiled_equals_untiled_away_from_tile_seams():
    model = _tiny(2)
    image = torch.rand(1, 150, 180, 3, generator=torch.Generator().manual_seed(2))
    whole = upscale_image(model, image, tile=512)
    steps = []
    tiled = upscale_image(model, image, tile=96, overlap=16, progress=lambda done, total: steps.append((done, total)))
    assert steps == [(i, 6) for i in range(1, 7)]  # 2 x 3 tiles: rows start at 0, 80; columns at 0, 80, 160
    assert whole.shape == tiled.shape == (1, 300, 360, 3)
    # a 1-block 2x RRDBNet sees 19 input pixels around each output pixel: beyond that a tile computes what the
    # whole image does
    rows, cols = _seams(150, 96, 16, 20), _seams(180, 96, 16, 20)
    far = ~(rows.repeat_interleave(2)[:, None] | cols.repeat_interleave(2)[None, :])
    assert far.float().mean() > 0.1
    diff = (whole - tiled).abs()[0].amax(-1)
    assert diff[far].max() <= 1 / 255
    assert diff[~far].max() > diff[far].max()  # the seams do differ: the test compares tiled with untiled


def test_out_of_memory_halves_the_tile():
    model = _tiny(2)
    sizes = []

    class Picky(UpscaleModel):
        limit = 128

        def __call__(self, x):
            sizes.append(max(x.shape[-2:]))
            if max(x.shape[-2:]) > self.limit:
                raise torch.OutOfMemoryError("CUDA out of memory (test)")
            return super().__call__(x)

    picky = Picky(model.network, 2, "ESRGAN")
    image = torch.rand(1, 150, 150, 3)
    out = upscale_image(picky, image, tile=512)
    # 512 (the whole image, 150 px) failed, 256 (the whole image again) failed, 128 ran
    assert sizes[:2] == [150, 150] and max(sizes[2:]) == 128
    torch.testing.assert_close(out, upscale_image(model, image, tile=128))
    picky.limit = 100
    with pytest.raises(torch.OutOfMemoryError):  # 128 fails too: nothing smaller is tried, as ComfyUI
        upscale_image(picky, torch.rand(1, 300, 300, 3), tile=256)


def test_cpu_tile_fits_the_memory_budget():
    config = rrdb.RRDBConfig()  # the real 64-feature 4x network, on the meta device: no memory used
    with torch.device("meta"):
        net = rrdb.RRDBNet(config)
    model = UpscaleModel(net, 4, "ESRGAN")
    assert pick_tile(model, 512, 512, budget=8 << 30) == 512
    tile = pick_tile(model, 512, 512, budget=1 << 30)
    assert tile < 512 and model.estimate_memory(tile) <= 1 << 30
    assert pick_tile(model, 100, 90, budget=8 << 30) == 128  # a small image is one tile


@pytest.mark.parametrize("keys,looks_like", [
    ({"layers.0.residual_group.blocks.0.norm1.weight": (4,), "conv_first.weight": (4, 3, 3, 3)}, "SwinIR"),
    ({"lora_unet_down_blocks_0.lora_down.weight": (4, 8)}, "LoRA"),
    ({"body.0.weight": (8, 3, 3, 3), "body.1.weight": (8,), "body.2.weight": (8, 8, 3, 3)}, "SRVGGNetCompact"),
    ({"model.0.weight": (8, 3, 3, 3), "model.1.sub.0.RDB1.conv1.0.weight": (4, 8, 3, 3),
      "model.1.sub.0.RDB1.conv1x1.weight": (4, 8, 1, 1)}, "ESRGAN+"),
    ({"foo.weight": (3, 3)}, "keys start foo.weight"),
])
def test_unknown_files_are_model_errors_saying_what_they_look_like(tmp_path, keys, looks_like):
    from safetensors.torch import save_file

    path = tmp_path / "mystery.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    with pytest.raises(ModelError, match="mystery.safetensors") as info:
        load_upscale_model(path)
    assert looks_like in str(info.value)


def test_broken_esrgan_files_are_model_errors(tmp_path):
    from safetensors.torch import save_file

    sd = rrdb.make_state_dict(rrdb.RRDBConfig(features=8, growth=4, blocks=1))
    sd["body.0.rdb2.conv3.weight"] = torch.zeros(4, 3, 3, 3)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelError, match="bad.safetensors.*do not fit"):
        load_upscale_model(tmp_path / "bad.safetensors")
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match="cut.pth"):
        load_upscale_model(tmp_path / "cut.pth")


def test_upscale_nodes_run_in_a_workflow(tmp_path):
    from PIL import Image

    from comfykit.engine import Engine

    models = tmp_path / "models"
    name = demo.ensure_demo_upscale_model(models)
    (tmp_path / "input").mkdir()
    Image.new("RGB", (40, 24), (200, 30, 30)).save(tmp_path / "input" / "small.png")
    g = {"1": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": name}},
         "2": {"class_type": "LoadImage", "inputs": {"image": "small.png"}},
         "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["1", 0], "image": ["2", 0]}},
         "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}}}
    engine = Engine(models, output_dir=tmp_path / "out", input_dir=tmp_path / "input", temp_dir=tmp_path / "tmp",
                    device="cpu", previews="none")
    try:
        assert engine.object_info()["UpscaleModelLoader"]["input"]["required"]["model_name"][0] == [name]
        events = []
        result = engine.run(g, on_event=events.append)
    finally:
        engine.shutdown()
    assert result.image.size == (160, 96)
    # the demo model is a nearest-neighbour 4x upscale plus random detail: the colour survives
    r, gr, b = result.image.getpixel((80, 48))
    assert r > 120 and gr < 110 and b < 110
    assert any(e.type == "progress" and e.data["node"] == "3" for e in events)


def test_other_architectures_go_through_spandrel_where_it_imports(tmp_path, monkeypatch):
    """A stand-in spandrel module (the real one needs a torchvision matching torch; test_upscale_spandrel.py runs
    it where it imports): its descriptor becomes an UpscaleModel called through the descriptor, and what it does
    not know is a ModelError."""
    import sys
    import types

    from safetensors.torch import save_file

    class UnsupportedModelError(Exception):
        pass

    class ImageModelDescriptor:
        def __init__(self, model, scale):
            self.model, self.scale = model, scale
            self.input_channels = self.output_channels = 3
            self.architecture = types.SimpleNamespace(name="SwinIR")

        def __call__(self, x):
            return torch.nn.functional.interpolate(self.model(x), scale_factor=self.scale, mode="nearest")

    class ModelLoader:
        def load_from_state_dict(self, sd):
            if not any("residual_group" in k for k in sd):
                raise UnsupportedModelError("unknown")
            conv = torch.nn.Conv2d(3, 3, 1)
            conv.load_state_dict({"weight": sd["conv_first.weight"], "bias": sd["conv_first.bias"]})
            return ImageModelDescriptor(conv, 2)

    class Registry:
        def copy(self):
            return self

        def architectures(self, order):
            load = ModelLoader().load_from_state_dict
            return [types.SimpleNamespace(architecture=types.SimpleNamespace(name="SwinIR", load=load),
                                          detect=lambda sd: any("residual_group" in k for k in sd))]

    fake = types.SimpleNamespace(ModelLoader=ModelLoader, ImageModelDescriptor=ImageModelDescriptor,
                                 UnsupportedModelError=UnsupportedModelError, MAIN_REGISTRY=Registry(),
                                 canonicalize_state_dict=dict, __version__="0.4.2")
    monkeypatch.setitem(sys.modules, "spandrel", fake)
    monkeypatch.setitem(sys.modules, "spandrel_extra_arches", None)  # a real one would add to the fake registry
    eye = torch.eye(3)[:, :, None, None]
    save_file({"layers.0.residual_group.blocks.0.norm1.weight": torch.ones(4), "conv_first.weight": eye,
               "conv_first.bias": torch.zeros(3)}, str(tmp_path / "swinir.safetensors"))
    model = load_upscale_model(tmp_path / "swinir.safetensors")
    assert (model.architecture, model.scale) == ("SwinIR", 2)
    image = torch.rand(1, 5, 7, 3)
    torch.testing.assert_close(upscale_image(model, image), image.repeat_interleave(2, 1).repeat_interleave(2, 2))
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError, match="other.safetensors.*spandrel does not know"):
        load_upscale_model(tmp_path / "other.safetensors")
