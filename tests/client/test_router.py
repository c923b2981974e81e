"""Routing of WebSocket messages to runs, replayed from a real ComfyUI 0.3.64 capture and synthetic frames."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from comfykit.client.collect import build_result, terminal_from_history
from comfykit.client.frames import encode_preview
from comfykit.client.router import Router, RunState
from comfykit.errors import ExecutionError
from comfykit.job import Job


def _make(router_legacy=False):
    done = []
    router = Router(done.append, lambda: router_legacy)
    return router, done


def _run(router, prompt_id, prompt=None):
    job = Job(prompt_id)
    run = RunState(prompt_id, prompt or {}, job)
    router.register(run)
    return run


def _types(job):
    return [event.type for event in _delivered(job)]


def _delivered(job):
    """The events the job's listeners got so far."""
    out = []
    while not job._queue.empty():
        out.append(job._queue.get())
    return out


@pytest.fixture(scope="module")
def transcript(reference_dir):
    return json.loads((reference_dir / "ws_transcript.json").read_text())


def test_real_transcript_gives_the_engine_event_set(transcript):
    for captured in transcript["runs"]:
        router, done = _make()
        run = _run(router, captured["prompt_id"])
        for message in captured["messages"]:
            assert message["frame"] == "text"
            router.on_text({"type": message["type"], "data": message["data"]})
        router.flush()
        # the done signal (executing with node None after execution_success) fires exactly once
        assert done == [run]
        assert run.terminal.type == "execution_success"
        assert run.executed == captured["executed_nodes"]
        assert run.cached == captured["execution_cached"][0]
        types = [e.type for e in run.events]
        assert "status" not in types and "progress_state" not in types
        assert types[0] == "execution_start" and types[-1] == "execution_success"
        # executing null is bookkeeping, never an event
        assert all(e.node is not None for e in run.events if e.type == "executing")
        assert set(run.outputs) == {"9"}
        assert set(run.timings) == set(captured["executed_nodes"])


def test_messages_of_other_prompts_and_status_are_not_mixed_in(transcript):
    captured = transcript["runs"][0]
    router, done = _make()
    mine = _run(router, captured["prompt_id"])
    other = _run(router, "someone-else")
    for message in captured["messages"]:
        router.on_text({"type": message["type"], "data": message["data"]})
    assert done == [mine]
    assert other.events == []


def test_interleaved_runs_each_get_their_own_events():
    router, done = _make()
    a, b = _run(router, "a"), _run(router, "b")
    for pid in ("a", "b"):
        router.on_text({"type": "execution_start", "data": {"prompt_id": pid}})
    for step in range(3):
        for pid in ("b", "a"):
            router.on_text({"type": "progress", "data": {"value": step + 1, "max": 3, "prompt_id": pid,
                                                         "node": "3"}})
    router.on_text({"type": "execution_success", "data": {"prompt_id": "a"}})
    router.on_text({"type": "executing", "data": {"node": None, "prompt_id": "a"}})
    assert done == [a]
    assert [e.prompt_id for e in a.events] == ["a"] * 5
    assert [e.prompt_id for e in b.events] == ["b"] * 4


def test_events_before_registration_are_replayed():
    router, done = _make()
    router.on_text({"type": "execution_start", "data": {"prompt_id": "late"}})
    run = _run(router, "late")
    assert [e.type for e in run.events] == ["execution_start"]


def test_legacy_preview_attaches_to_the_progress_it_follows():
    router, _ = _make(router_legacy=True)
    run = _run(router, "p")
    router.on_text({"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": "p", "node": "3"}})
    assert run.events == []  # held until we know whether a preview follows
    router.on_binary(encode_preview(Image.new("RGB", (8, 8), "red")))
    router.on_text({"type": "progress", "data": {"value": 2, "max": 2, "prompt_id": "p", "node": "3"}})
    router.on_text({"type": "executing", "data": {"node": "8", "prompt_id": "p"}})  # no preview for step 2
    first, second, executing = _delivered(run.job)
    assert first.data["value"] == 1 and first.preview.size == (8, 8)
    assert second.data["value"] == 2 and second.preview is None
    assert executing.type == "executing"
    assert [e.type for e in run.events] == ["progress", "progress", "executing"]
    assert not any(e.has_preview for e in run.events)  # the Result keeps no previews unless asked


def test_held_progress_is_flushed_when_the_socket_is_idle():
    router, _ = _make(router_legacy=True)
    run = _run(router, "p")
    router.on_text({"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": "p", "node": "3"}})
    router.flush()
    assert [e.type for e in run.events] == ["progress"]


def test_metadata_preview_attaches_to_the_progress_after_it():
    router, _ = _make()
    run = _run(router, "p")
    other = _run(router, "q")
    meta = {"node_id": "3", "prompt_id": "p", "display_node_id": "3", "parent_node_id": None,
            "real_node_id": "3"}
    router.on_binary(encode_preview(Image.new("RGB", (8, 8), "blue"), metadata=meta))
    router.on_text({"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": "p", "node": "3"}})
    router.on_text({"type": "progress", "data": {"value": 2, "max": 2, "prompt_id": "p", "node": "3"}})
    delivered = _delivered(run.job)
    assert delivered[0].preview is not None and delivered[0].preview.size == (8, 8)
    assert delivered[1].preview is None
    assert other.events == []


def test_previews_stay_in_the_result_events_when_asked():
    router, _ = _make()
    run = RunState("k", {}, Job("k"), keep_previews=True)
    router.register(run)
    meta = {"node_id": "3", "prompt_id": "k", "display_node_id": "3", "parent_node_id": None,
            "real_node_id": "3"}
    router.on_binary(encode_preview(Image.new("RGB", (8, 8), "blue"), metadata=meta))
    router.on_text({"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": "k", "node": "3"}})
    assert run.events[0].preview.size == (8, 8)


def test_garbage_binary_frame_is_ignored():
    router, _ = _make()
    run = _run(router, "p")
    router.on_binary(b"\x00")
    assert run.events == []


class _FakeServer:
    output_dir = None

    def view(self, filename, subfolder, type):  # noqa: A002
        return Image.new("RGB", (4, 4), "white")


def test_result_from_history_when_the_socket_missed_the_end():
    run = RunState("p", {"1": {}}, Job("p"))
    run.handle(__import__("comfykit").Event("execution_start", {"prompt_id": "p"}), 0.0)
    item = {"prompt": [0, "p", {"1": {"class_type": "X", "inputs": {}}}, {}, ["9"]],
            "outputs": {"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}},
            "status": {"status_str": "success", "completed": True,
                       "messages": [["execution_start", {"prompt_id": "p"}],
                                    ["execution_cached", {"nodes": ["4"], "prompt_id": "p"}],
                                    ["execution_success", {"prompt_id": "p"}]]}}
    result, error = build_result(_FakeServer(), run, item)
    assert error is None and result.status == "success"
    assert result.image.size == (4, 4) and list(result.images_by_node) == ["9"]
    assert result.cached == ["4"]
    assert result.prompt == item["prompt"][2]
    assert result.events[-1].type == "execution_success"


def test_errored_history_gives_execution_error(reference_dir):
    data = json.loads((reference_dir / "errors" / "runtime_error_broken_ckpt.json").read_text())
    end = next(m for m in data["messages"] if m["type"] == "execution_error")
    item = {"outputs": {}, "status": {"status_str": "error", "completed": False,
                                       "messages": [["execution_error", end["data"]]]}}
    run = RunState(data["prompt_id"], {}, Job(data["prompt_id"]))
    result, error = build_result(_FakeServer(), run, item)
    assert result.status == "error" and isinstance(error, ExecutionError)
    assert error.node_id == "4" and error.node_type == "CheckpointLoaderSimple"
    assert error.traceback and "header too large" in str(error)
    assert terminal_from_history(item, data["prompt_id"]).type == "execution_error"
