"""Demo checkpoints (deterministic, importable without torch at `import comfykit`) and the hub helper (offline)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from comfykit import demo, hub
from comfykit.errors import ModelError


def test_import_comfykit_stays_light():
    code = ("import sys, comfykit, comfykit.demo, comfykit.hub; "
            "print(sorted(m for m in ('torch', 'diffusers', 'huggingface_hub', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_demo_checkpoints_are_deterministic_per_seed(tmp_path):
    pytest.importorskip("torch")
    a = demo.make_checkpoint(tmp_path / "a.safetensors", arch="sd1", seed=0)
    b = demo.make_checkpoint(tmp_path / "b.safetensors", arch="sd1", seed=0)
    c = demo.make_checkpoint(tmp_path / "c.safetensors", arch="sd1", seed=1)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert a.stat().st_size < 20_000_000  # tiny: mostly the 49408-token embedding table
    with pytest.raises(ValueError, match="unknown demo arch"):
        demo.make_checkpoint(tmp_path / "x.safetensors", arch="sd3")


def test_ensure_demo_checkpoint(models_dir):
    assert demo.ensure_demo_checkpoint(models_dir) == demo.DEMO_CHECKPOINT
    path = models_dir / "checkpoints" / demo.DEMO_CHECKPOINT
    mtime = path.stat().st_mtime_ns
    assert demo.ensure_demo_checkpoint(models_dir) == demo.DEMO_CHECKPOINT
    assert path.stat().st_mtime_ns == mtime  # not rewritten when present


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """huggingface_hub.hf_hub_download replaced by one that writes b"weights"; yields the (repo, file) calls."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = []

    def fake_download(repo_id, filename, local_dir, token=None):
        calls.append((repo_id, filename))
        target = tmp_path / "dl" / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"weights")
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return calls


def test_hub_download_puts_the_file_in_the_models_folder(tmp_path, fake_hub):
    calls = fake_hub
    path = hub.download("sd15", tmp_path / "models")
    assert path == tmp_path / "models" / "checkpoints" / "v1-5-pruned-emaonly-fp16.safetensors"
    assert path.read_bytes() == b"weights"
    assert calls == [("Comfy-Org/stable-diffusion-v1-5-archive", "v1-5-pruned-emaonly-fp16.safetensors")]
    hub.download("sd15", tmp_path / "models")  # already there: no second download
    assert len(calls) == 1
    got = hub.download("someone/repo/sub/dir/my.safetensors", tmp_path / "models", folder="loras")
    assert got == tmp_path / "models" / "loras" / "my.safetensors" and calls[-1] == ("someone/repo", "sub/dir/my.safetensors")
    with pytest.raises(ValueError, match="unknown model"):
        hub.download("nonsense", tmp_path / "models")


def test_offline_download_fails_clearly_and_falls_back_to_the_demo(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    pytest.importorskip("torch")

    def offline(**kwargs):
        raise OSError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ModelError, match="could not download sd_xl_base_1.0.safetensors.*check the internet"):
        hub.download("sdxl", tmp_path)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    with pytest.warns(UserWarning, match="demo checkpoint"):
        assert hub.ensure_checkpoint(tmp_path) == demo.DEMO_CHECKPOINT
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    with pytest.warns(UserWarning, match="not reachable"):
        assert hub.ensure_checkpoint(tmp_path / "other") == demo.DEMO_CHECKPOINT
    (tmp_path / "checkpoints" / "v1-5-pruned-emaonly-fp16.safetensors").write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hub.ensure_checkpoint(tmp_path) == "v1-5-pruned-emaonly-fp16.safetensors"


def test_hub_reachable_respects_offline_mode(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_reachable() is False


def test_hub_bundles_fetch_every_file_of_a_split_model_into_its_folder(tmp_path, fake_hub):
    paths = hub.download("flux-schnell-split", tmp_path / "models")
    assert sorted(p.relative_to(tmp_path / "models").as_posix() for p in paths) == [
        "diffusion_models/flux1-schnell.safetensors", "text_encoders/clip_l.safetensors",
        "text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors", "vae/ae.safetensors"]
    assert hub.download("flux-schnell", tmp_path / "models").parent.name == "checkpoints"


def test_a_gated_model_says_how_to_log_in(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    class GatedRepoError(Exception):
        pass

    def gated(**kwargs):
        raise GatedRepoError("401 Client Error: access to model stabilityai/stable-diffusion-3.5-medium is restricted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(ModelError, match=r"is gated: accept its licence at https://huggingface.co/stabilityai/"
                                         r"stable-diffusion-3.5-medium.*huggingface-cli login"):
        hub.download("sd3.5-medium", tmp_path)
