"""Detection, shape inference, file formats and the errors a user sees for bad files."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

from comfykit import demo  # noqa: E402
from comfykit.engine.models import ModelManager, load_checkpoint, load_vae  # noqa: E402
from comfykit.engine.models.checkpoint import infer_unet_config, infer_vae_config  # noqa: E402
from comfykit.engine.models.unet import UNetConfig, UNetModel  # noqa: E402
from comfykit.engine.models.vae import AutoencoderKL, VAEConfig  # noqa: E402
from comfykit.errors import ModelError  # noqa: E402


def _meta_state(module_fn):
    with torch.device("meta"):
        return module_fn().state_dict()


@pytest.mark.parametrize("cfg", [
    # 320 base channels but only two levels and one res block per level
    UNetConfig(model_channels=320, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
               context_dim=768),
    # SD1.5 itself
    UNetConfig(),
    # SDXL-like: no attention on level 0, deeper transformers below, adm, linear projections
    UNetConfig(model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=(2, 2, 2), transformer_depth=(0, 2, 10),
               transformer_depth_middle=10, context_dim=2048, num_head_channels=64, use_linear=True,
               adm_in_channels=2816),
    # uneven res blocks per level, 9 input channels (inpainting)
    UNetConfig(in_channels=9, model_channels=64, channel_mult=(1, 3), num_res_blocks=(2, 1), transformer_depth=(1, 0),
               transformer_depth_middle=0, context_dim=32, num_head_channels=64, use_linear=True),
], ids=["320ch-2levels", "sd15", "sdxl", "uneven"])
def test_unet_config_is_read_off_shapes(cfg):
    arch = "sd1" if cfg.num_head_channels < 0 else "sd2"
    got = infer_unet_config(_meta_state(lambda: UNetModel(cfg)), arch)
    for field in ("in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks",
                  "transformer_depth", "transformer_depth_middle", "context_dim", "use_linear", "adm_in_channels"):
        assert getattr(got, field) == getattr(cfg, field), field
    assert got.output_depths() == cfg.output_depths()


def test_vae_config_is_read_off_shapes():
    cfg = VAEConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=16)
    got = infer_vae_config(_meta_state(lambda: AutoencoderKL(cfg)))
    assert got == cfg


def test_demo_checkpoints_detect_arch_and_prediction(make_ckpt):
    expected = {"sd1": ("sd1", "eps", "SD15"), "sd2": ("sd2", "eps", "SD15"), "sd2-v": ("sd2", "v", "SD15"),
                "sdxl": ("sdxl", "eps", "SDXL")}
    for arch, (family, prediction, latent) in expected.items():
        model, clip, vae = load_checkpoint(make_ckpt(arch))
        assert (model.arch, model.prediction, model.latent_format.name) == (family, prediction, latent)
        assert model.dtype == torch.float32 and model.device.type == "cpu"
        cond, pooled = clip.encode("a cat")
        assert cond.shape == (1, 77, 64 if arch == "sdxl" else 32) and pooled.shape == (1, 32)
        if arch != "sdxl":
            assert model.encode_adm(pooled, 64, 64) is None


def test_sd2_v_prediction_heuristic_without_marker_key(make_ckpt, tmp_path):
    """Without a v_pred key, ComfyUI's norm1-bias spread rule decides (spread biases -> v-prediction)."""
    sd = load_file(str(make_ckpt("sd2")))
    key = next(k for k in sorted(sd, reverse=True) if k.endswith("1.transformer_blocks.0.norm1.bias")
               and "output_blocks" in k)
    sd[key] = torch.randn(sd[key].shape, generator=torch.Generator().manual_seed(0))
    save_file(sd, str(tmp_path / "v.safetensors"))
    assert load_checkpoint(tmp_path / "v.safetensors")[0].prediction == "v"
    assert load_checkpoint(make_ckpt("sd2"))[0].prediction == "eps"


def test_pipeline_runs_on_64px_image(sd1):
    model, clip, vae = sd1
    cond, _ = clip.encode("a photo of a cat")
    latent = vae.encode(torch.rand(1, 64, 64, 3))
    out = model(latent, torch.tensor([999.0]), cond)
    images = vae.decode(out)
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(images).all()


def test_ckpt_file_with_nested_state_dict_loads_the_same(make_ckpt, tmp_path, sd1):
    sd = load_file(str(make_ckpt("sd1")))
    torch.save({"state_dict": sd, "global_step": 1}, tmp_path / "x.ckpt")
    model, clip, _ = load_checkpoint(tmp_path / "x.ckpt")
    cond = clip.encode("cat")[0]
    torch.testing.assert_close(cond, sd1[1].encode("cat")[0])
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(model(x, torch.tensor([5.0]), cond), sd1[0](x, torch.tensor([5.0]), cond))


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_diffusers_folder_loads_like_the_single_file(arch, tmp_path, sd1, sdxl):
    pytest.importorskip("diffusers")
    folder = demo.make_diffusers_folder(tmp_path / arch, arch)
    model, clip, vae = load_checkpoint(folder)
    ref_model, ref_clip, ref_vae = sd1 if arch == "sd1" else sdxl
    assert model.arch == arch
    cond, pooled = clip.encode("a cat")
    torch.testing.assert_close(cond, ref_clip.encode("a cat")[0])
    x = torch.randn(1, 4, 8, 8)
    y = model.encode_adm(pooled, 64, 64)
    torch.testing.assert_close(model(x, torch.tensor([7.0]), cond, y), ref_model(x, torch.tensor([7.0]), cond, y),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vae.decode(x), ref_vae.decode(x), atol=1e-5, rtol=1e-5)


def test_standalone_vae_files(make_ckpt, tmp_path, sd1):
    x = torch.randn(1, 4, 8, 8)
    plain = load_vae(demo.make_vae(tmp_path / "plain.safetensors"))  # the VAE of make_checkpoint(seed=0)
    torch.testing.assert_close(plain.decode(x), sd1[2].decode(x))
    sd = load_file(str(make_ckpt("sd1")))
    save_file({k: v for k, v in sd.items() if k.startswith("first_stage_model.")}, str(tmp_path / "pref.safetensors"))
    torch.testing.assert_close(load_vae(tmp_path / "pref.safetensors").decode(x), sd1[2].decode(x))


@pytest.mark.parametrize("case", ["missing", "garbage", "truncated", "unknown", "lora", "vae", "bad-ckpt"])
def test_bad_files_raise_model_error_quickly(case, make_ckpt, tmp_path):
    good = make_ckpt("sd1")
    path = tmp_path / f"{case}.safetensors"
    if case == "garbage":
        path.write_bytes(b"<html>404 not found</html>" * 10)
    elif case == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "unknown":
        save_file({"foo.weight": torch.zeros(3), "bar.bias": torch.zeros(2), "baz": torch.zeros(1)}, str(path))
    elif case == "lora":
        demo.make_lora(path, good)
    elif case == "vae":
        demo.make_vae(path)
    elif case == "bad-ckpt":
        path = tmp_path / "bad.ckpt"
        path.write_bytes(b"PK\x03\x04 not really a zip")
    expected = {"missing": "no such file", "garbage": "not a safetensors file", "truncated": "truncated",
                "unknown": "no UNet keys", "lora": "looks like a LoRA, put it in models/loras",
                "vae": "looks like a VAE", "bad-ckpt": "cannot read it"}[case]
    start = time.monotonic()
    with pytest.raises(ModelError, match=expected) as info:
        load_checkpoint(path)
    assert path.name in str(info.value)
    assert time.monotonic() - start < 30  # generous: a hang, not speed, is what this guards against


def test_manager_reuses_loaded_models_until_the_file_changes(make_ckpt, tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(make_ckpt("sd1").read_bytes())
    manager = ModelManager(device="cpu")
    first = manager.load_checkpoint(path)
    second = manager.load_checkpoint(path)
    assert all(a is b for a, b in zip(first, second))
    assert manager.call(lambda: 42, *first) == 42
    demo.make_checkpoint(path, arch="sd1", seed=1)  # a new file at the same path is a new model
    third = manager.load_checkpoint(path)
    assert third[0] is not first[0]
    manager.unload_all()
    assert manager.loaded() == []
    assert manager.load_checkpoint(path)[0] is not third[0]


def test_tiled_decode(sd1):
    vae = sd1[2]
    latent = torch.randn(1, 4, 24, 20, generator=torch.Generator().manual_seed(0))
    full = vae.decode(latent)
    torch.testing.assert_close(vae.decode_tiled(latent, 64, 64), full)  # one tile in each pass: the same
    tiled = vae.decode_tiled(latent, 12, 12, overlap=4)
    assert tiled.shape == full.shape == (1, 192, 160, 3)
    assert tiled.min() >= 0 and tiled.max() <= 1
    # tiles see less context (the mid attention is global) but the picture stays the same one
    assert torch.corrcoef(torch.stack([tiled.flatten(), full.flatten()]))[0, 1] > 0.8


def test_manager_retries_once_after_out_of_memory(monkeypatch):
    manager = ModelManager(device="cpu")
    offloaded = []
    monkeypatch.setattr(manager, "offload", lambda keep=(): offloaded.append(keep))
    attempts = iter([torch.OutOfMemoryError("CUDA out of memory"), "ok"])

    def flaky():
        result = next(attempts)
        if isinstance(result, Exception):
            raise result
        return result

    assert manager.call(flaky) == "ok" and len(offloaded) == 1
    with pytest.raises(torch.OutOfMemoryError):  # a second failure is the caller's to handle (engine.free)
        manager.call(lambda: (_ for _ in ()).throw(torch.OutOfMemoryError("again")))
