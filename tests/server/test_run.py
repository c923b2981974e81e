"""End to end on the demo checkpoint: the WS message sequence, images via /view, cache hits, previews, errors."""

from __future__ import annotations

import io
import json
import re
import struct

import pytest
import requests
from conftest import PREVIEW_SIZE, WS, post, t2i, texts, wait_history
from PIL import Image


def _types(frames):
    return [m["type"] for m in texts(frames)]


def _shape(types):
    """Message types with the per-step (progress_state, progress) pairs collapsed: step counts differ."""
    return re.sub(r"(progress_state,progress,)+", "progress_state,progress,", ",".join(types) + ",").split(",")


def _reference_run(reference_dir, label):
    transcript = json.loads((reference_dir / "ws_transcript.json").read_text())
    return next(run for run in transcript["runs"] if run["label"] == label)


def test_text_to_image_message_order_history_and_view(server, demo_ckpt, reference_dir):
    ws = WS(server.url)
    assert ws.hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                   "sid": ws.client_id}}
    answer = post(server, t2i(demo_ckpt, "a red fox", seed=7), client_id=ws.client_id)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
    pid = body["prompt_id"]
    frames = ws.until_done(pid)
    ws.close()

    types = _types(frames)
    assert _shape(types) == _shape(_reference_run(reference_dir, "t2i_0")["message_types"])
    # ComfyUI's verified order: two status on put/get, start, cached, executing..., success, status, executing null
    assert types[:4] == ["status", "status", "execution_start", "execution_cached"]
    assert types[-3:] == ["execution_success", "status", "executing"]
    msgs = texts(frames)
    assert msgs[0]["data"]["status"]["exec_info"]["queue_remaining"] >= 1
    assert msgs[-2]["data"] == {"status": {"exec_info": {"queue_remaining": 0}}}
    executing = [m["data"]["node"] for m in msgs if m["type"] == "executing"]
    assert executing == ["4", "5", "7", "6", "3", "8", "9", None]
    progress = [m["data"] for m in msgs if m["type"] == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [(1, 2, "3"), (2, 2, "3")]
    states = [m["data"] for m in msgs if m["type"] == "progress_state"]
    final = states[-1]["nodes"]
    ref_state = next(m["data"] for m in reversed(_reference_run(reference_dir, "t2i_0")["messages"])
                     if m["type"] == "progress_state")
    assert set(final) == set(ref_state["nodes"]) and all(n["state"] == "finished" for n in final.values())
    assert set(final["3"]) == set(ref_state["nodes"]["3"]) and final["3"]["max"] == 2
    executed = [m["data"] for m in msgs if m["type"] == "executed"]
    assert len(executed) == 1 and executed[0]["node"] == "9"
    image_ref = executed[0]["output"]["images"][0]
    assert image_ref["type"] == "output" and image_ref["filename"].startswith("tiny_t2i_")

    history = wait_history(server, pid)
    assert history["prompt"][1] == pid and history["prompt"][3] == {"client_id": ws.client_id}
    assert history["prompt"][4] == ["9"]
    assert history["outputs"] == {"9": {"images": [image_ref]}}
    assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
    assert [m[0] for m in history["status"]["messages"]] == ["execution_start", "execution_cached",
                                                              "execution_success"]
    assert history["meta"]["9"] == {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}

    png = requests.get(server.url + "/view", params=image_ref, timeout=30)
    assert png.status_code == 200 and png.headers["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.size == (32, 32)
    assert json.loads(image.text["prompt"])["9"]["class_type"] == "SaveImage"


def test_resubmit_is_fully_cached_and_replays_outputs(server, demo_ckpt, reference_dir):
    prompt = t2i(demo_ckpt, "a blue bird", seed=11)
    ws = WS(server.url)
    first = post(server, prompt, client_id=ws.client_id).json()["prompt_id"]
    ws.until_done(first)
    second = post(server, prompt, client_id=ws.client_id).json()["prompt_id"]
    frames = ws.until_done(second)
    ws.close()
    assert _shape(_types(frames)) == _shape(_reference_run(reference_dir, "t2i_2")["message_types"])
    msgs = texts(frames)
    cached = next(m["data"] for m in msgs if m["type"] == "execution_cached")
    assert sorted(cached["nodes"]) == ["3", "4", "5", "6", "7", "8", "9"]
    assert [m["data"]["node"] for m in msgs if m["type"] == "executing"] == [None]
    assert [m["data"]["node"] for m in msgs if m["type"] == "executed"] == ["9"]
    assert wait_history(server, second)["outputs"] == wait_history(server, first)["outputs"]


def test_previews_in_both_binary_formats_when_broadcast(server, demo_ckpt):
    """A prompt without client_id broadcasts progress: each socket gets the frame format it asked for."""
    legacy, modern = WS(server.url), WS(server.url, metadata=True)
    assert modern.flags["type"] == "feature_flags" and modern.flags["data"]["supports_preview_metadata"] is True
    pid = post(server, t2i(demo_ckpt, "a green frog", seed=3, steps=2)).json()["prompt_id"]

    def finished(frame):
        return frame[0] == "text" and frame[1]["type"] == "status" and \
            frame[1]["data"]["status"]["exec_info"]["queue_remaining"] == 0
    got_legacy, got_modern = legacy.until(finished), modern.until(finished)
    legacy.close()
    modern.close()
    for frames in (got_legacy, got_modern):  # no execution messages without a client id, only progress
        assert set(_types(frames)) == {"status", "progress_state", "progress"}

    # legacy: progress JSON, then >I 1, >I 1 (JPEG), image
    kinds = [k if k == "binary" else v["type"] for k, v in got_legacy if k == "binary" or v["type"] == "progress"]
    assert kinds == ["progress", "binary", "progress", "binary"]
    frame = next(v for k, v in got_legacy if k == "binary")
    assert struct.unpack(">II", frame[:8]) == (1, 1)
    preview = Image.open(io.BytesIO(frame[8:]))
    assert preview.format == "JPEG" and max(preview.size) == PREVIEW_SIZE  # 8x8 latent enlarged to the size

    # with metadata: >I 4, >I len, JSON, image - sent before its progress JSON
    kinds = [k if k == "binary" else v["type"] for k, v in got_modern if k == "binary" or v["type"] == "progress"]
    assert kinds == ["binary", "progress", "binary", "progress"]
    frame = next(v for k, v in got_modern if k == "binary")
    kind, length = struct.unpack(">II", frame[:8])
    meta = json.loads(frame[8:8 + length])
    assert kind == 4 and meta["prompt_id"] == pid and meta["node_id"] == "3" and meta["image_type"] == "image/jpeg"
    assert Image.open(io.BytesIO(frame[8 + length:])).format == "JPEG"
    wait_history(server, pid)


def test_runtime_error_reports_execution_error_and_queue_goes_on(server, demo_ckpt, reference_dir):
    ref = json.loads((reference_dir / "errors" / "runtime_error_broken_ckpt.json").read_text())
    ref_error = next(m["data"] for m in ref["messages"] if m["type"] == "execution_error")
    ws = WS(server.url)
    bad = post(server, ref["workflow"], client_id=ws.client_id)
    assert bad.status_code == 200
    good = post(server, t2i(demo_ckpt, "after the failure", seed=5), client_id=ws.client_id).json()["prompt_id"]
    frames = ws.until_done(bad.json()["prompt_id"])
    msgs = texts(frames)
    assert "execution_error" in _types(frames), msgs
    error = next(m["data"] for m in msgs if m["type"] == "execution_error")
    assert set(error) == set(ref_error)
    assert error["node_id"] == "4" and error["node_type"] == "CheckpointLoaderSimple"
    assert error["current_inputs"] == {"ckpt_name": ["broken.safetensors"]}
    assert isinstance(error["traceback"], list) and error["exception_message"]
    after = _types(frames)[_types(frames).index("execution_error") + 1:]
    assert after[-1] == "executing" and set(after[:-1]) == {"status"}, after  # the next put may interleave
    history = wait_history(server, bad.json()["prompt_id"])
    assert history["status"]["status_str"] == "error" and history["status"]["completed"] is False
    assert history["status"]["messages"][-1][0] == "execution_error"
    ws.until_done(good)
    ws.close()
    history = wait_history(server, good)
    assert history["status"]["status_str"] == "success", history["status"]


def test_interrupt_stops_the_running_prompt(server, demo_ckpt):
    ws = WS(server.url)
    pid = post(server, t2i(demo_ckpt, "a long run", seed=9, steps=500), client_id=ws.client_id).json()["prompt_id"]
    ws.until(lambda f: f[0] == "text" and f[1]["type"] == "progress")
    # an interrupt naming another prompt is ignored; one naming the running prompt stops it
    assert requests.post(server.url + "/interrupt", json={"prompt_id": "not-running"}, timeout=30).status_code == 200
    assert requests.post(server.url + "/api/interrupt", json={"prompt_id": pid}, timeout=30).status_code == 200
    frames = ws.until_done(pid)
    ws.close()
    msgs = texts(frames)
    interrupted = [m["data"] for m in msgs if m["type"] == "execution_interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["prompt_id"] == pid and interrupted[0]["node_id"] == "3"
    steps = [m["data"]["value"] for m in msgs if m["type"] == "progress"]
    assert max(steps, default=0) < 500
    history = wait_history(server, pid)
    assert history["status"] == {"status_str": "error", "completed": False,
                                 "messages": history["status"]["messages"]}
    assert history["status"]["messages"][-1][0] == "execution_interrupted"


def test_client_disconnecting_mid_run_harms_nothing(server, demo_ckpt):
    ws = WS(server.url)
    pid = post(server, t2i(demo_ckpt, "nobody watches", seed=13, steps=3), client_id=ws.client_id).json()["prompt_id"]
    ws.until(lambda f: f[0] == "text" and f[1]["type"] == "progress")
    ws.sock.sock.close()  # drop the TCP connection without a close handshake
    assert wait_history(server, pid)["status"]["status_str"] == "success"
    again = WS(server.url, ws.client_id)  # the same client id reconnects and is served normally
    assert again.hello["data"]["sid"] == ws.client_id
    pid2 = post(server, t2i(demo_ckpt, "nobody watches", seed=13, steps=3), client_id=ws.client_id).json()
    assert "execution_success" in _types(again.until_done(pid2["prompt_id"]))
    again.close()


@pytest.mark.parametrize("route", ["/prompt", "/api/prompt"])
def test_get_prompt_reports_queue(server, route):
    assert requests.get(server.url + route, timeout=30).json() == {"exec_info": {"queue_remaining": 0}}
