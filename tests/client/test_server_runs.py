"""Runs through comfykit's server launched by ComfyServer: images, previews, parity with Engine, threads."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
from client_workflows import SIZE, STEPS, load_and_save, txt2img
from PIL import Image

import comfykit as ck
from comfykit.client import ComfyServer


@pytest.fixture(params=["cmd", "main.py"])
def launched(request):
    return request.getfixturevalue("server" if request.param == "cmd" else "main_py_server")


@pytest.mark.parametrize("preview_format", ["metadata", "legacy"])
def test_txt2img_images_and_previews(launched, ckpt_name, preview_format):
    client = launched if preview_format == "metadata" else ComfyServer.connect(launched.url, preview_format="legacy",
                                                                               output_dir=launched.output_dir)
    try:
        seen = []
        job = client.submit(txt2img(ckpt_name, seed=len(preview_format)), on_event=seen.append)
        events = list(job.events(timeout=120))
        result = job.result(timeout=60)
    finally:
        if client is not launched:
            client.close()
    assert result.ok and result.error is None
    assert list(result.images_by_node) == ["9"]
    assert result.image.size == (SIZE, SIZE) and result.image.mode == "RGB"
    assert result.outputs["9"]["images"][0]["type"] == "output"
    assert len(result.files) == 1 and result.files[0].is_file()  # the server's output folder is local
    assert Image.open(result.files[0]).size == (SIZE, SIZE)
    assert sorted(result.executed + result.cached) == ["3", "4", "5", "6", "7", "8", "9"]
    assert "3" in result.executed  # a new seed always samples again
    assert set(result.timings) == set(result.executed) and all(t >= 0 for t in result.timings.values())
    # the iterator, the callback and the Result agree, and carry only this prompt's events
    assert [e.type for e in events] == [e.type for e in seen] == [e.type for e in result.events]
    assert {e.prompt_id for e in events} == {job.prompt_id}
    assert events[0].type == "execution_start" and events[-1].type == "execution_success"
    assert {e.type for e in events} <= {"execution_start", "execution_cached", "executing", "progress", "executed",
                                       "execution_success"}
    progress = [e for e in events if e.type == "progress"]
    assert [e.data["value"] for e in progress] == list(range(1, STEPS + 1))
    assert all(isinstance(e.preview, Image.Image) for e in progress), preview_format
    if preview_format == "metadata":
        assert client._socket.uses_metadata_previews


def test_main_py_gets_comfyuis_flags(main_py_server, checkout):
    argv = json.loads((checkout / "argv.json").read_text())
    port = main_py_server.url.rsplit(":", 1)[1]
    assert argv[:5] == ["--listen", "127.0.0.1", "--port", port, "--disable-auto-launch"]
    assert "--cpu" in argv
    assert main_py_server.system_stats()["system"]["argv"][-len(argv):] == argv


def test_same_image_as_the_embedded_engine(server, client_models, ckpt_name, tmp_path):
    prompt = txt2img(ckpt_name, seed=1234, prefix="parity")
    remote = server.run(prompt, timeout=60)
    with ck.Engine(client_models, output_dir=tmp_path) as engine:
        local = engine.run(prompt, timeout=60)
    assert np.array_equal(np.asarray(remote.image), np.asarray(local.image))
    # the server may replay the loader from its cache; the same nodes ran or were cached either way
    assert set(remote.executed + remote.cached) == set(local.executed + local.cached)
    assert remote.events[-1].type == local.events[-1].type == "execution_success"


def test_rerun_is_cached_and_still_has_the_image(server, ckpt_name):
    prompt = txt2img(ckpt_name, seed=77, prefix="cached")
    first = server.run(prompt, timeout=60)
    again = server.run(prompt, timeout=60)
    assert sorted(again.cached) == sorted(prompt) and again.executed == []
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))


def test_concurrent_runs_from_threads_keep_their_events(server, ckpt_name):
    results, events, errors = {}, {}, []

    def work(i):
        mine = []
        try:
            results[i] = server.run(txt2img(ckpt_name, seed=100 + i, prefix=f"thread{i}"), on_event=mine.append,
                                    timeout=120)
        except Exception as exc:  # reported below with the thread's number
            errors.append((i, exc))
        events[i] = mine

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert not errors
    assert len({r.prompt_id for r in results.values()}) == 4
    for i, result in results.items():
        assert {e.prompt_id for e in events[i]} == {result.prompt_id}
        assert events[i][-1].type == "execution_success"
        assert len([e for e in events[i] if e.type == "progress"]) == STEPS
        assert result.outputs["9"]["images"][0]["filename"].startswith(f"thread{i}_")


def test_arun_from_asyncio(server, ckpt_name):
    async def main():
        return await asyncio.wait_for(asyncio.gather(server.arun(txt2img(ckpt_name, seed=5, prefix="async_a")),
                                                     server.arun(txt2img(ckpt_name, seed=6, prefix="async_b"))),
                                      120)

    a, b = asyncio.run(main())
    assert a.ok and b.ok and a.prompt_id != b.prompt_id


def test_upload_image_then_load_image(server, tmp_path):
    picture = Image.new("RGB", (24, 16), (10, 200, 30))
    name = server.upload_image(picture)
    result = server.run(load_and_save(name), timeout=30)
    assert np.array_equal(np.asarray(result.image), np.asarray(picture))
    path = tmp_path / "pic.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    nested = server.upload_image(path, subfolder="sub", overwrite=True)
    assert nested == "sub/pic.png"
    assert server.view("pic.png", "sub", "input").getpixel((0, 0)) == (1, 2, 3)


def test_workflow_dsl_with_the_servers_schema(server, ckpt_name):
    wf = ck.Workflow(schema=server)
    model, clip, vae = wf.CheckpointLoaderSimple(ckpt_name=ckpt_name)
    latent = wf.EmptyLatentImage(width=SIZE, height=SIZE, batch_size=1)
    sampled = wf.KSampler(model=model, seed=3, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
                          positive=wf.CLIPTextEncode(text="a cat", clip=clip),
                          negative=wf.CLIPTextEncode(text="", clip=clip), latent_image=latent, denoise=1.0)
    wf.PreviewImage(images=wf.VAEDecode(samples=sampled, vae=vae))
    result = server.run(wf, timeout=60)
    assert result.image.size == (SIZE, SIZE)
    assert result.files == []  # PreviewImage writes to temp, not output
    with pytest.raises(ck.ValidationError):
        wf.KSampler(model=model, sampler_name="not-a-sampler")


def test_plain_http_api(server, ckpt_name):
    stats = server.system_stats()
    assert stats["devices"] and "python_version" in stats["system"]
    assert "KSampler" in server.object_info() and ckpt_name in json.dumps(server.object_info("CheckpointLoaderSimple"))
    assert set(server.queue()) == {"queue_running", "queue_pending"}
    done = server.run(txt2img(ckpt_name, seed=9, steps=1, prefix="http"), timeout=60)
    assert server.history(done.prompt_id)["outputs"]["9"] == done.outputs["9"]
    assert done.prompt_id in server.history(max_items=5)
    assert server.history("no-such-prompt") is None
    server.free()
    ref = done.outputs["9"]["images"][0]
    assert server.view(ref["filename"], ref["subfolder"], ref["type"]).size == (SIZE, SIZE)
    with pytest.raises(ck.ServerError, match="404"):
        server.view("missing.png")
