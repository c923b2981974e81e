"""The memory model on a real CUDA device (skipped without one): streaming with pinned host copies, real frees."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_streamed_model_matches_full_load_on_cuda(models_dir, ckpt_name):
    from comfykit.engine.models.checkpoint import load_checkpoint
    from comfykit.engine.models.manager import ModelManager
    from comfykit.engine.models.offload import model_bytes

    path = models_dir / "checkpoints" / ckpt_name
    model = load_checkpoint(path, device="cuda", dtype=torch.float32)[0]
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    context = torch.randn(1, 77, model.config.context_dim)
    want = model(x, t, context)
    manager = ModelManager("cuda", dtype=torch.float32, budget=model_bytes(model) // 3)
    streamed = manager.load_checkpoint(path)[0]
    got = manager.call(lambda: streamed(x, t, context), streamed)
    placement = manager._resident[next(iter(manager._resident))]
    assert placement.streamer is not None and placement.streamer.streamed_bytes > 0
    assert any(host.is_pinned() for _, host in placement.streamer._host.values())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_offloading_frees_device_memory(models_dir, ckpt_name):
    from comfykit.engine.models.manager import ModelManager

    manager = ModelManager("cuda")
    model, clip, vae = manager.load_checkpoint(models_dir / "checkpoints" / ckpt_name)
    manager.use(model, clip, vae)
    before = torch.cuda.memory_allocated()
    manager.offload()
    assert torch.cuda.memory_allocated() < before and manager.resident() == []
    assert model.device.type == "cpu"
