"""The memory model with fake device sizes: LRU unloading, partial loading, dropping on short host RAM, OOM retry."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_graphs

torch = pytest.importorskip("torch")

from comfykit.engine import Engine  # noqa: E402
from comfykit.engine.models.manager import ModelManager  # noqa: E402
from comfykit.engine.models.offload import model_bytes  # noqa: E402
from comfykit.errors import ExecutionError  # noqa: E402


@pytest.fixture()
def ckpt_path(models_dir, ckpt_name):
    return models_dir / "checkpoints" / ckpt_name


def _kinds(events, kind):
    return [name.split("(")[0] for k, name in events if k == kind]


def test_idle_models_leave_least_recently_used_first(ckpt_path):
    manager = ModelManager("cpu")  # unmanaged: measure the sizes
    model, clip, vae = manager.load_checkpoint(ckpt_path)
    sizes = {name: model_bytes(m) for name, m in (("unet", model), ("clip", clip), ("vae", vae))}
    assert sizes["unet"] < min(sizes["clip"], sizes["vae"])  # so the UNet fits where either of them was
    budget = sizes["clip"] + sizes["vae"] + 1
    manager = ModelManager("cpu", budget=budget)
    model, clip, vae = manager.load_checkpoint(ckpt_path)
    manager.use(clip)
    manager.use(vae)
    assert manager.resident() == ["TextEncoder(comfykit-demo-sd15.safetensors)", "VAE(comfykit-demo-sd15.safetensors)"]
    manager.use(clip)  # touched: now the VAE is the least recently used
    manager.use(model)
    assert _kinds(manager.events, "offload") == ["VAE"]
    assert [n.split("(")[0] for n in manager.resident()] == ["TextEncoder", "DiffusionModel"]
    assert manager.free_memory() >= 0


def test_text_encoder_leaves_the_device_after_encoding_when_memory_is_short(ckpt_path):
    manager = ModelManager("cpu", budget=10**9)
    model, clip, vae = manager.load_checkpoint(ckpt_path)
    manager.call(lambda: clip.encode("a cat"), clip)
    assert any("TextEncoder" in name for name in manager.resident())  # plenty of room: it stays
    manager = ModelManager("cpu", budget=model_bytes(clip) + model_bytes(model) // 2)
    model, clip, vae = manager.load_checkpoint(ckpt_path)
    manager.call(lambda: clip.encode("a cat"), clip)
    assert manager.resident() == [] and _kinds(manager.events, "offload") == ["TextEncoder"]


def _image(result):
    return np.asarray(result.images[0], dtype=np.int16)


def test_a_model_larger_than_the_budget_is_streamed_and_gives_the_same_image(models_dir, ckpt_name, tmp_path):
    graph = tiny_graphs.t2i(ckpt_name, save=False)
    full = Engine(models_dir, output_dir=tmp_path / "o1", device="cpu", previews="none").run(graph)
    manager = ModelManager("cpu")
    model, _, _ = manager.load_checkpoint(models_dir / "checkpoints" / ckpt_name)
    budget_gb = model_bytes(model) / 3 / 2**30  # a third of the UNet fits
    engine = Engine(models_dir, output_dir=tmp_path / "o2", device="cpu", previews="none", vram_budget=budget_gb)
    streamed = engine.run(graph)
    assert "DiffusionModel" in _kinds(engine.models.events, "partial")
    placement = next(p for p in engine.models._resident.values() if p.streamer is not None)
    assert placement.streamer.streamed_bytes > 0 and placement.streamer.streamed_layers > 0
    assert placement.streamer.resident_bytes <= budget_gb * 2**30
    assert np.array_equal(_image(streamed), _image(full))


def test_no_vram_streams_every_layer_and_matches(models_dir, ckpt_name, tmp_path):
    graph = tiny_graphs.t2i(ckpt_name, save=False, steps=1)
    full = Engine(models_dir, output_dir=tmp_path / "o1", device="cpu", previews="none").run(graph)
    engine = Engine(models_dir, output_dir=tmp_path / "o2", device="cpu", previews="none", vram="no",
                    vram_budget=1.0)
    assert np.array_equal(_image(engine.run(graph)), _image(full))
    assert set(_kinds(engine.models.events, "partial")) == {"DiffusionModel", "TextEncoder", "VAE"}


def test_short_host_ram_drops_a_model_and_reads_it_again(ckpt_path):
    manager = ModelManager("cpu")
    model, clip, vae = manager.load_checkpoint(ckpt_path)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    want = vae.decode(latent)
    manager = ModelManager("cpu", budget=max(model_bytes(model), model_bytes(vae)) + 1, host_budget=0)
    model, clip, vae = manager.load_checkpoint(ckpt_path)
    manager.use(vae)
    manager.use(model)  # no room for both, no host RAM: the VAE is dropped, not copied
    assert _kinds(manager.events, "drop") == ["VAE"]
    assert all(p.numel() == 0 for p in vae.module.parameters())  # nothing held, on the device or the host
    got = manager.call(lambda: vae.decode(latent), vae)
    assert "VAE" in _kinds(manager.events, "restore")
    torch.testing.assert_close(got, want)
    # only what is used is read again, onto the host, and placed with room made
    manager = ModelManager("cpu", budget=max(model_bytes(m) for m in (model, clip, vae)) + 1, host_budget=0)
    model, clip, vae = manager.load_checkpoint(ckpt_path)
    for m in (clip, vae, model):
        manager.use(m)  # one at a time fits: the text encoder, then the VAE are dropped
    assert _kinds(manager.events, "drop") == ["TextEncoder", "VAE"]
    torch.testing.assert_close(manager.call(lambda: vae.decode(latent), vae), want)
    assert _kinds(manager.events, "restore") == ["VAE"]  # not the text encoder: nothing asked for it
    assert all(p.numel() == 0 for m in clip.clips.values() for p in m.parameters())
    assert manager.resident() == [_names(vae)] and manager.free_memory() >= 0


def test_out_of_memory_retries_once_with_partial_loading(ckpt_path):
    manager = ModelManager("cpu", budget=10**9)
    model, clip, vae = manager.load_checkpoint(ckpt_path)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "ok"

    assert manager.call(flaky, model) == "ok"
    assert _kinds(manager.events, "partial") == ["DiffusionModel"]

    def always():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.50 GiB")

    with pytest.raises(torch.OutOfMemoryError) as info:
        manager.call(always, model)
    message = str(info.value)
    assert "3.50 GiB" in message and "vram='low'" in message and "resolution" in message


def test_out_of_memory_that_fits_once_the_others_leave_retries_with_the_model_whole(ckpt_path):
    manager = ModelManager("cpu", budget=10**9)
    model, clip, vae = manager.load_checkpoint(ckpt_path)  # all three on the device
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:  # the text encoder and VAE were in the way of 20 MiB of activations
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return "ok"

    assert manager.call(flaky, model) == "ok"
    assert sorted(_kinds(manager.events, "offload")) == ["TextEncoder", "VAE"]
    assert _kinds(manager.events, "partial") == []  # not streamed: it runs at full speed
    assert [n.split("(")[0] for n in manager.resident()] == ["DiffusionModel"]
    calls.clear()

    def twice():  # it was not the only allocation short of room: then the model is streamed
        calls.append(1)
        if len(calls) <= 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return "ok"

    assert manager.call(twice, model) == "ok" and len(calls) == 3
    assert _kinds(manager.events, "partial") == ["DiffusionModel"]


def test_engine_names_the_node_and_stays_usable_after_out_of_memory(models_dir, ckpt_name, tmp_path, monkeypatch):
    from comfykit.engine.models.diffusion import VAE

    engine = Engine(models_dir, output_dir=tmp_path, device="cpu", previews="none", vram_budget=1.0)
    graph = tiny_graphs.t2i(ckpt_name, save=False, steps=1)

    def no_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    with monkeypatch.context() as m:
        m.setattr(VAE, "decode", no_memory)
        with pytest.raises(ExecutionError) as info:
            engine.run(graph)
    message = str(info.value)
    assert "node 8 (VAEDecode)" in message and "9.00 GiB" in message and "vram='low'" in message
    assert engine.run(graph).status == "success"
    engine.shutdown()


def test_models_loaded_onto_the_device_count_against_its_memory(tmp_path):
    # FLUX.1 from split files on a T4: the fp8 transformer fits, the text encoders then do not fit beside it (the
    # tiny demo's encoders are the larger part; the budget keeps the real proportions of what fits)
    from comfykit import demo

    names = {"unet": "f.safetensors", "clip_l": "l.safetensors", "t5xxl": "t5.safetensors", "vae": "ae.safetensors"}
    demo.make_dit_files(tmp_path, "flux", names=names)
    unet_path, te_paths = tmp_path / "diffusion_models" / "f.safetensors", [
        tmp_path / "text_encoders" / "l.safetensors", tmp_path / "text_encoders" / "t5.safetensors"]
    sizes = ModelManager("cpu")
    unet_bytes = model_bytes(sizes.load_diffusion_model(unet_path))
    te_bytes = model_bytes(sizes.load_text_encoders(te_paths, "flux"))
    manager = ModelManager("cpu", budget=te_bytes + unet_bytes // 2)
    unet = manager.load_diffusion_model(unet_path)
    assert [n.split("(")[0] for n in manager.resident()] == ["DiffusionModel"]  # loaded there: it counts
    assert manager.free_memory() == te_bytes + unet_bytes // 2 - unet_bytes
    te = manager.load_text_encoders(te_paths, "flux")
    assert len(manager.resident()) == 1 and manager.free_memory() >= 0  # to the host: no room beside the UNet
    want = sizes.load_text_encoders(te_paths, "flux").encode("a red fox")
    got = manager.call(lambda: te.encode("a red fox"), te)
    assert _kinds(manager.events, "offload") == ["DiffusionModel", "FluxTextEncoder"]  # room made, then given back
    torch.testing.assert_close(got[0], want[0])
    manager.use(unet)
    assert [n.split("(")[0] for n in manager.resident()] == ["DiffusionModel"] and manager.free_memory() >= 0


def test_a_controlnet_counts_against_the_device_and_goes_there_with_the_model(ckpt_path, tmp_path):
    from comfykit import demo
    from comfykit.engine.models.controlnet import control_models

    demo.make_controlnet(tmp_path / "c.safetensors", arch="sd1", layout="ldm")
    manager = ModelManager("cpu", budget=10**9)
    model, clip, vae = manager.load_checkpoint(ckpt_path)
    cnet = manager.load_controlnet(tmp_path / "c.safetensors")
    assert "ControlModel(c.safetensors)" in manager.resident()  # loaded onto the device: its bytes count
    manager.offload()
    assert manager.resident() == [] and _kinds(manager.events, "offload").count("ControlModel") == 1
    conditioning = [[torch.zeros(1, 77, 768), {"control": cnet}]]
    assert control_models(conditioning, conditioning, None) == [cnet.model]  # each network once
    stacked = [[torch.zeros(1, 77, 768), {"control": cnet.with_hint(torch.zeros(1, 3, 8, 8), vae=vae,
                                                                      previous=cnet.with_hint(torch.zeros(1, 3, 8, 8)))}]]
    assert control_models(stacked) == [cnet.model, vae]  # the chain's networks, and a VAE that encodes a hint
    manager.call(lambda: None, model, *control_models(conditioning))  # what KSampler does
    assert manager.resident() == ["DiffusionModel(comfykit-demo-sd15.safetensors)", "ControlModel(c.safetensors)"]


def test_a_lora_clone_shares_its_originals_room_and_both_leave_together(ckpt_path, tmp_path):
    # a LoRA clone holds its original's unpatched weights: placing it must not evict (or, with host RAM short,
    # drop and so empty) the original, and unloading either must not leave the other counted as on the device
    from comfykit import demo
    from comfykit.engine.models.lora import load_lora

    demo.make_lora(tmp_path / "l.safetensors", ckpt_path)
    reference = ModelManager("cpu")
    base, clip, vae = reference.load_checkpoint(ckpt_path)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    context = torch.randn(1, 77, base.config.context_dim)
    want = load_lora(base, clip, tmp_path / "l.safetensors", 1.0, 0.0)[0](x, t, context)

    size = model_bytes(base)
    manager = ModelManager("cpu", budget=int(size * 1.5), host_budget=0)  # no host RAM: unloading drops
    base, clip, vae = manager.load_checkpoint(ckpt_path)
    manager.use(base)
    clone = load_lora(base, clip, tmp_path / "l.safetensors", 1.0, 0.0)[0]
    got = manager.call(lambda: clone(x, t, context), clone)
    torch.testing.assert_close(got, want)
    assert manager.events == [] and len(manager.resident()) == 2  # the clone's new weights fit beside the original
    assert size * 0.5 > manager.free_memory() >= 0  # the shared weights counted once
    failed = []

    def flaky():
        if not failed:
            failed.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 KiB")
        return clone(x, t, context)

    torch.testing.assert_close(manager.call(flaky, clone), want)
    assert manager.events == []  # the retry unloads everything but the clone and the original it stands on
    manager.use(vae)  # no room for it: the original goes, and the clone with it
    assert _kinds(manager.events, "drop") == ["DiffusionModel"] and manager.resident() == [_names(vae)]
    assert "DiffusionModel" in _kinds(manager.events, "offload")
    torch.testing.assert_close(manager.call(lambda: clone(x, t, context), clone), want)  # read again, same result


def _names(model):
    return f"{type(model).__name__}({model.name})"


def test_free_memory_on_cuda_honours_a_per_process_memory_fraction(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (100 * gib, 140 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index=None: 12 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index=None: 10 * gib)
    fraction = {"value": 1.0}
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda index=None: fraction["value"])
    manager = ModelManager("cuda", reserve=gib)
    assert manager.free_memory() == (100 + 12 - 10 - 1) * gib  # free, plus the allocator's unused cache
    fraction["value"] = 15 / 140  # bench_gpu.py's T4: 15 GB of the 140
    assert manager.free_memory() == (15 - 10 - 1) * gib
