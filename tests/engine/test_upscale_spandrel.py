"""The spandrel path of the upscale nodes, on tiny random networks built with spandrel's own architecture classes:
SwinIR / HAT / Compact / ESRGAN+ files load through UpscaleModelLoader and upscale through ImageUpscaleWithModel
(tiled) to what spandrel's descriptor gives; the built-in RRDBNet equals spandrel's on the same ESRGAN file; files
spandrel does not know, or cannot load, are ModelErrors. Skipped where spandrel does not import (it needs a
torchvision matching torch; the main venv and CI have none)."""

from __future__ import annotations

import functools
import sys

import pytest

torch = pytest.importorskip("torch")
try:
    import spandrel
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.HAT import HAT
    from spandrel.architectures.SwinIR import SwinIR
except Exception as e:  # ImportError, or torchvision's operators failing to load against this torch
    pytest.skip(f"spandrel does not import here ({type(e).__name__})", allow_module_level=True)

from safetensors.torch import save_file  # noqa: E402

from comfykit.engine import Engine  # noqa: E402
from comfykit.engine.models import rrdb  # noqa: E402
from comfykit.engine.models import upscale as up  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402
from comfykit.nodes.upscale import ImageUpscaleWithModel, UpscaleModelLoader  # noqa: E402

TILE, OVERLAP = 16, 4  # a 32 px image in 3 x 3 tiles, the last ones short (spandrel pads those)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Networks this small gain nothing from threads, and on a shared CPU OpenMP's waiting threads made each
    tiled run take seconds instead of milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def engine(tmp_path):
    eng = Engine(tmp_path / "models", output_dir=tmp_path / "out", input_dir=tmp_path / "in",
                 temp_dir=tmp_path / "tmp", device="cpu", previews="none")
    yield eng
    eng.shutdown()


def _randomised(net: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """``net`` with random weights (normal, ``std``) and its output shifted to a mean of 0.5 per channel by the
    last conv's bias, so it lands mostly inside 0..1 (a clamped output would compare nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif name.endswith("bias"):
                p.zero_()
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        probe = net.eval()(torch.rand(1, _in_channels(net), 32, 32, generator=gen))
        # a pixel-shuffled last conv feeds output channel c from its channels c * r^2 ... (c + 1) * r^2 - 1
        last.bias.view(probe.shape[1], -1).add_((0.5 - probe.mean((0, 2, 3)))[:, None])
    return net


def _in_channels(net: torch.nn.Module) -> int:
    """Image channels a test network takes (its first conv's, less a pixel-unshuffle)."""
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    return first.in_channels // (getattr(net, "shuffle_factor", None) or 1) ** 2


def _state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def _save(sd: dict[str, torch.Tensor], path, wrap: str | None = None):
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:  # the official SwinIR / HAT / Real-ESRGAN releases are torch pickles wrapped in params / params_ema
        torch.save({wrap: sd} if wrap else sd, path)
    return path


def _comfy_tiled(fn, x: torch.Tensor, tile: int, overlap: int, scale: int) -> torch.Tensor:
    """ComfyUI's tiled_scale for one [1, C, H, W] image larger than a tile, written out: a tile every
    tile - overlap px (the last clamped inside the image), each output tile weighted by a linear feather of
    overlap * scale px from its edges, the sum divided by the summed weights."""
    _, _, h, w = x.shape
    out, div = torch.zeros(1, 3, h * scale, w * scale), torch.zeros(1, 3, h * scale, w * scale)
    feather = overlap * scale
    for y in range(0, h - overlap, tile - overlap):
        for x0 in range(0, w - overlap, tile - overlap):
            y0, x1 = max(0, min(h - overlap, y)), max(0, min(w - overlap, x0))
            piece = fn(x[:, :, y0:y0 + tile, x1:x1 + tile]).float()
            mask = torch.ones_like(piece)
            for d in (2, 3):
                if feather < mask.shape[d]:
                    for t in range(feather):
                        mask.narrow(d, t, 1).mul_((t + 1) / feather)
                        mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_((t + 1) / feather)
            rows = slice(y0 * scale, y0 * scale + piece.shape[2])
            cols = slice(x1 * scale, x1 * scale + piece.shape[3])
            out[:, :, rows, cols] += piece * mask
            div[:, :, rows, cols] += mask
    return out / div


def _run_nodes(engine, name: str, image: torch.Tensor, monkeypatch, tiled: bool):
    """UpscaleModelLoader then ImageUpscaleWithModel on the engine; ``tiled``: with TILE / OVERLAP instead of
    ComfyUI's 512 / 32, so a 32 px image is cut into tiles."""
    model = UpscaleModelLoader(engine).load_model(name)[0]
    with monkeypatch.context() as patch:
        if tiled:
            patch.setattr(up, "upscale_image", functools.partial(up.upscale_image, tile=TILE, overlap=OVERLAP))
        return model, ImageUpscaleWithModel(engine).upscale(model, image)[0]


def _tiny(arch: str) -> tuple[torch.nn.Module, int]:
    if arch == "SwinIR":
        net = SwinIR(img_size=16, embed_dim=12, depths=[1, 1], num_heads=[2, 2], window_size=4, mlp_ratio=2.0,
                     upscale=2, upsampler="pixelshuffle")
        return _randomised(net, 1), 2
    if arch == "HAT":
        net = HAT(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, compress_ratio=3,
                  squeeze_factor=4, mlp_ratio=2.0, upscale=4, num_feat=8)
        return _randomised(net, 2, std=0.1), 4
    net = Compact(num_feat=8, num_conv=2, upscale=4)  # SRVGGNetCompact: realesr-general-x4v3's architecture
    return _randomised(net, 3, std=0.1), 4


@pytest.mark.parametrize("arch,file,wrap", [("SwinIR", "swinir_x2.pth", "params"),
                                            ("SwinIR", "swinir_x2.safetensors", None),
                                            ("HAT", "hat_x4.pth", "params_ema"),
                                            ("HAT", "hat_x4.safetensors", None),
                                            ("Compact", "realesr-general-x4v3.pth", "params")])
def test_spandrel_architectures_upscale_as_spandrel_does(engine, monkeypatch, arch, file, wrap):
    net, scale = _tiny(arch)
    folder = engine.folders.folder("upscale_models")
    folder.mkdir(parents=True, exist_ok=True)
    _save(_state_dict(net), folder / file, wrap)
    direct = spandrel.ModelLoader().load_from_file(folder / file)
    assert isinstance(direct, spandrel.ImageModelDescriptor) and direct.scale == scale
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    x = image.movedim(-1, 1)

    model, whole = _run_nodes(engine, file, image, monkeypatch, tiled=False)
    assert (model.architecture, model.scale, model.name) == (direct.architecture.name, scale, file)
    assert whole.shape == (1, 32 * scale, 32 * scale, 3)
    expected = direct(x)
    torch.testing.assert_close(whole, expected.movedim(1, -1), atol=1e-5, rtol=0)
    # the file is the network that was saved: spandrel read its hyperparameters back
    torch.testing.assert_close(expected, net(x).clamp(0, 1), atol=1e-5, rtol=0)
    inside = ((expected > 0.01) & (expected < 0.99)).float().mean()
    assert inside > 0.5, "the random network clamps most pixels: the comparison would be empty"

    _, tiled = _run_nodes(engine, file, image, monkeypatch, tiled=True)
    torch.testing.assert_close(tiled, _comfy_tiled(direct, x, TILE, OVERLAP, scale).movedim(1, -1), atol=1e-5,
                               rtol=0)
    assert (tiled - whole).abs().max() > 1e-3  # the tiles did differ from one whole-image call


def _spandrel_esrgan(kind: str) -> tuple[ESRGAN, int]:
    """A tiny ESRGAN built with spandrel's class (ESRGAN repository key layout): 4x, 2x, Real-ESRGAN x2plus (input
    pixel-unshuffled by 2) and x1 (by 4)."""
    in_nc, scale, shuffle = {"x4": (3, 4, None), "x2": (3, 2, None), "x2plus": (12, 4, 2), "x1": (48, 4, 4)}[kind]
    net = ESRGAN(in_nc=in_nc, out_nc=3, num_filters=8, num_blocks=2, scale=scale, shuffle_factor=shuffle)
    return _randomised(net, 4, std=0.1), scale // (shuffle or 1)


@pytest.mark.parametrize("kind", ["x4", "x2", "x2plus", "x1"])
def test_builtin_rrdbnet_equals_spandrels_on_the_same_esrgan_file(tmp_path, kind):
    net, scale = _spandrel_esrgan(kind)
    sd = _state_dict(net)
    assert rrdb.layout(sd) == "old"
    path = _save(sd, tmp_path / f"esrgan_{kind}.pth")
    ours = up.load_upscale_model(path)
    direct = spandrel.ModelLoader().load_from_file(path)
    assert isinstance(ours.network, rrdb.RRDBNet)  # the built-in network, even where spandrel imports
    assert ours.scale == direct.scale == scale and ours.architecture.endswith("ESRGAN")
    # 30 x 22: not a multiple of 4, so spandrel pads the pixel-unshuffled models' input, and ours must too
    x = torch.rand(1, 3, 30, 22, generator=torch.Generator().manual_seed(1))
    expected = direct(x)
    assert expected.shape == (1, 3, 30 * scale, 22 * scale)
    assert ((expected > 0.01) & (expected < 0.99)).float().mean() > 0.5
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=0)
    tiled = up.upscale_image(ours, x.movedim(1, -1), tile=TILE, overlap=OVERLAP)
    torch.testing.assert_close(tiled, _comfy_tiled(direct, x, TILE, OVERLAP, scale).movedim(1, -1), atol=1e-5,
                               rtol=0)


def test_esrgan_plus_goes_to_spandrel(tmp_path):
    net = _randomised(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2, plus=True), 5, std=0.1)
    path = _save(_state_dict(net), tmp_path / "esrgan_plus_x2.safetensors")
    model = up.load_upscale_model(path)
    assert not isinstance(model.network, rrdb.RRDBNet) and model.scale == 2
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model(x), net(x).clamp(0, 1), atol=1e-5, rtol=0)


def test_files_spandrel_does_not_know_or_cannot_load_are_model_errors(tmp_path):
    vae = {"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3), "encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}
    path = _save(vae, tmp_path / "not_an_upscaler.safetensors")
    with pytest.raises(ModelError, match=r"not_an_upscaler\.safetensors.*a VAE.*spandrel does not know"):
        up.load_upscale_model(path)
    # spandrel detects an SRVGGNetCompact from the key names, but a tensor is missing: say which architecture
    sd = _state_dict(_tiny("Compact")[0])
    del sd["body.2.bias"]
    path = _save(sd, tmp_path / "cut_compact.safetensors")
    with pytest.raises(ModelError, match=r"cut_compact\.safetensors: spandrel .* reads it as a .*Compact model but "
                                         r"cannot load it \(.*body\.2\.bias.*\).*SRVGGNetCompact"):
        up.load_upscale_model(path)


def test_multi_input_models_are_refused(tmp_path, monkeypatch):
    """spandrel's inpainting models (LaMa, MAT) take an image and a mask: not an upscale model, as in ComfyUI."""

    class TinyInpaint(spandrel.Architecture):
        def __init__(self):
            super().__init__(id="TinyInpaint", detect=lambda sd: "tiny_inpaint.weight" in sd)

        def load(self, sd):
            model = torch.nn.Conv2d(4, 3, 1)
            model.load_state_dict({k.split(".", 1)[1]: v for k, v in sd.items()})
            return spandrel.MaskedImageModelDescriptor(model, model.state_dict(), self, purpose="Inpainting",
                                                       tags=[], supports_half=True, supports_bfloat16=True,
                                                       input_channels=3, output_channels=3)

    registry = spandrel.ArchRegistry()
    registry.add(spandrel.ArchSupport.from_architecture(TinyInpaint()))
    monkeypatch.setattr(up, "_spandrel_registry", lambda module: (registry, False))
    path = _save({"tiny_inpaint.weight": torch.zeros(3, 4, 1, 1), "tiny_inpaint.bias": torch.zeros(3)},
                 tmp_path / "inpaint.safetensors")
    with pytest.raises(ModelError, match=r"inpaint\.safetensors: a TinyInpaint model \(Inpainting\), which is not "
                                         "a single-image model"):
        up.load_upscale_model(path)


def test_extra_architectures_load_where_spandrel_extra_arches_is_installed(tmp_path, monkeypatch):
    """spandrel_extra_arches' non-commercial architectures load as ComfyUI loads them (added to a copy of
    spandrel's registry: spandrel's own is left alone); without the package the error says to install it."""
    extra = pytest.importorskip("spandrel_extra_arches")
    from spandrel_extra_arches.architectures.SRFormer import SRFormer

    net = _randomised(SRFormer(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=2.0,
                               upscale=2, upsampler="pixelshuffle"), 6)
    path = _save(_state_dict(net), tmp_path / "srformer_x2.pth", "params")
    model = up.load_upscale_model(path)
    assert (model.architecture, model.scale) == ("SRFormer", 2)
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model(x), net(x).clamp(0, 1), atol=1e-5, rtol=0)
    assert "SRFormer" not in spandrel.MAIN_REGISTRY and "SRFormer" in {a.architecture.id for a in
                                                                       extra.EXTRA_REGISTRY}
    monkeypatch.setitem(sys.modules, "spandrel_extra_arches", None)  # as if not installed
    with pytest.raises(ModelError, match=r"srformer_x2\.pth.*without spandrel_extra_arches.*pip install "
                                         "spandrel_extra_arches"):
        up.load_upscale_model(path)
