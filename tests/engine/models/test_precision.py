"""The dtype each network computes in: ComfyUI's choices per GPU (a T4 has no native bf16), and the overrides."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from comfykit.engine.models import precision  # noqa: E402
from comfykit.engine.models.precision import Precision, precision_for  # noqa: E402

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make torch report one CUDA GPU of the given capability and name (no CUDA is needed)."""
    def install(capability: tuple[int, int], name: str) -> None:
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
        # what torch says on a T4: bf16 "supported" (emulated); the policy must not follow it
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    return install


@pytest.mark.parametrize("capability,name,want", [
    ((7, 5), "Tesla T4", Precision(unet=F16, dit=F16, text_encoder=F16, vae=F32)),  # Colab's free GPU
    ((7, 0), "Tesla V100-SXM2-16GB", Precision(unet=F16, dit=F16, text_encoder=F16, vae=F32)),
    ((6, 0), "Tesla P100-PCIE-16GB", Precision(unet=F16, dit=F16, text_encoder=F16, vae=F32)),  # Kaggle's
    ((8, 0), "NVIDIA A100-SXM4-40GB", Precision(unet=F16, dit=BF16, text_encoder=F16, vae=BF16)),
    ((8, 9), "NVIDIA L4", Precision(unet=F16, dit=BF16, text_encoder=F16, vae=BF16)),
    ((9, 0), "NVIDIA H100 80GB HBM3", Precision(unet=F16, dit=BF16, text_encoder=F16, vae=BF16)),
    ((6, 1), "NVIDIA GeForce GTX 1080 Ti", Precision(unet=F32, dit=F32, text_encoder=F32, vae=F32)),  # slow fp16
    ((7, 5), "NVIDIA GeForce GTX 1660 SUPER", Precision(unet=F32, dit=F32, text_encoder=F32, vae=F32)),  # black
])
def test_each_gpu_gets_comfyuis_dtypes(fake_gpu, capability, name, want):
    fake_gpu(capability, name)
    assert precision_for("cuda") == want
    assert precision_for("cuda:0") == want


def test_the_cpu_computes_in_float32_and_overrides_win(fake_gpu):
    assert precision_for("cpu") == Precision(F32, F32, F32, F32)
    assert precision_for("cpu", unet=BF16, text_encoder=F16, vae=BF16) == Precision(BF16, BF16, F16, BF16)
    fake_gpu((7, 5), "Tesla T4")
    # dtype= covers every diffusion model, FLUX.1 included; the text encoder and VAE keep the device's
    assert precision_for("cuda", unet=F32) == Precision(F32, F32, F16, F32)
    assert precision_for("cuda", vae=BF16).vae == BF16


def test_families_take_their_kind_of_dtype(fake_gpu):
    from comfykit.engine.models.checkpoint import FAMILIES

    fake_gpu((7, 5), "Tesla T4")
    t4 = precision_for("cuda")
    fake_gpu((8, 0), "NVIDIA A100-SXM4-40GB")
    a100 = precision_for("cuda")
    by_name = {f.name: f for f in FAMILIES}
    assert by_name["flux"].compute_dtype(a100) == BF16 and by_name["flux"].compute_dtype(t4) == F16
    assert by_name["sd3"].compute_dtype(a100) == F16  # ComfyUI runs SD3 in fp16 where it can
    assert by_name["sdxl"].compute_dtype(a100) == by_name["sd1"].compute_dtype(t4) == F16


def test_dtype_names_and_bad_ones():
    assert precision.parse_dtype("bf16") == BF16 and precision.parse_dtype(F16) == F16
    assert precision.parse_dtype(None) is None
    with pytest.raises(ValueError, match="vae_dtype='fp64' is not known; use one of fp32"):
        precision.parse_dtype("fp64", "vae_dtype")


def test_engine_dtype_options_reach_the_loaded_models(tmp_path):
    from comfykit import demo
    from comfykit.engine import Engine
    from comfykit.engine.models.offload import model_modules

    demo.make_checkpoint(tmp_path / "checkpoints" / "d.safetensors", arch="sd1", seed=1)
    engine = Engine(tmp_path, device="cpu", dtype="bf16", text_encoder_dtype="fp16", vae_dtype="bf16",
                    previews="none")
    try:
        model, clip, vae = engine.models.load_checkpoint(tmp_path / "checkpoints" / "d.safetensors")
        assert engine.models.models() == [model, clip, vae]
        dtypes = [{p.dtype for m in model_modules(part) for p in m.parameters()} for part in (model, clip, vae)]
        assert dtypes == [{BF16}, {F16}, {BF16}]
    finally:
        engine.shutdown()
    with pytest.raises(ValueError, match="text_encoder_dtype='half' is not known"):
        Engine(tmp_path, text_encoder_dtype="half")
