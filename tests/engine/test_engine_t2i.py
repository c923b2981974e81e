"""The default text-to-image graph on the tiny demo checkpoint: ComfyUI's order, cache behaviour and messages."""

from __future__ import annotations

import json

import pytest

from comfykit.graph import builtin

IGNORED = {"status", "progress_state"}  # queue and progress-state frames are the HTTP server's business


def golden_types(run):
    types = [t for t in run["message_types"] if t not in IGNORED]
    assert types[-1] == "executing"  # the final `executing node:null` comes from the server's worker loop
    return types[:-1]


def test_node_set_equals_builtin_schema():
    from comfykit.nodes import NODE_CLASS_MAPPINGS

    assert set(NODE_CLASS_MAPPINGS) == set(builtin.BUILTIN_NODES)
    for name, cls in NODE_CLASS_MAPPINGS.items():
        info = builtin.object_info()[name]
        assert bool(cls.OUTPUT_NODE) == info["output_node"], name
        assert list(cls.RETURN_TYPES) == info["output"], name
        assert dict(cls.HIDDEN) == info["input"].get("hidden", {}), name


def test_messages_match_comfyui_transcript(engine, ckpt_name, reference_dir):
    runs = {r["label"]: r for r in json.loads((reference_dir / "ws_transcript.json").read_text())["runs"]}
    prompt = json.loads(json.dumps(runs["t2i_0"]["workflow"]))
    prompt["4"]["inputs"]["ckpt_name"] = ckpt_name
    engine.free(unload_models=False)  # forget cached outputs, keep the checkpoint loaded
    first = engine.execute(prompt, prompt_id="t2i_0")
    assert first.ok, first.error
    assert [e.type for e in first.events] == golden_types(runs["t2i_0"])
    assert first.executed == runs["t2i_0"]["executed_nodes"] == ["4", "5", "7", "6", "3", "8", "9"]
    history = runs["t2i_0"]["history"][runs["t2i_0"]["prompt_id"]]
    assert first.outputs == history["outputs"]  # {"9": {"images": [{"filename": "tiny_t2i_00001_.png", ...}]}}
    golden_progress = [m["data"] for m in runs["t2i_0"]["messages"] if m["type"] == "progress"]
    ours = [e.data for e in first.events if e.type == "progress"]
    assert [(d["value"], d["max"], d["node"]) for d in ours] == \
        [(d["value"], d["max"], d["node"]) for d in golden_progress]
    for ours_event, golden in zip(first.events, [m for m in runs["t2i_0"]["messages"] if m["type"] not in IGNORED]):
        assert list(ours_event.data) == list(golden["data"]), ours_event.type  # same keys, same order

    prompt["6"]["inputs"]["text"] = runs["t2i_1"]["workflow"]["6"]["inputs"]["text"]
    second = engine.execute(prompt, prompt_id="t2i_1")
    assert [e.type for e in second.events] == golden_types(runs["t2i_1"])
    assert second.events[1].data["nodes"] == runs["t2i_1"]["execution_cached"][0]
    assert second.executed == runs["t2i_1"]["executed_nodes"]

    third = engine.execute(prompt, prompt_id="t2i_2")
    assert [e.type for e in third.events] == golden_types(runs["t2i_2"])
    assert third.events[1].data["nodes"] == runs["t2i_2"]["execution_cached"][0]
    assert third.executed == [] and third.outputs == second.outputs
    replay = [e for e in third.events if e.type == "executed"][0]
    assert replay.data["output"] == second.outputs["9"]
    assert third.image.tobytes() == second.image.tobytes()


def test_changing_steps_reruns_only_sampler_decode_save(engine, ckpt_name, t2i_graph):
    engine.execute(t2i_graph(ckpt_name, steps=2), prompt_id="a")
    r = engine.execute(t2i_graph(ckpt_name, steps=3), prompt_id="b")
    assert r.executed == ["3", "8", "9"]
    assert r.events[1].data["nodes"] == ["4", "5", "6", "7"]
    assert sorted(r.timings) == ["3", "8", "9"]
    assert len([e for e in r.events if e.type == "progress"]) == 3


def test_progress_carries_previews_for_a_listener(engine, ckpt_name, t2i_graph):
    seen = []
    r = engine.execute(t2i_graph(ckpt_name, steps=2, seed=7), prompt_id="prev", on_event=seen.append)
    previews = [e.preview for e in seen if e.type == "progress"]
    # the decoded image's size (8x8 latent x 8), not enlarged to preview_size
    assert len(previews) == 2 and all(p is not None and p.size == (64, 64) for p in previews)
    assert not any(e.has_preview for e in r.events)  # the Result keeps the events, not their previews


def test_same_seed_same_image_different_seed_differs(engine, ckpt_name, t2i_graph):
    a = engine.execute(t2i_graph(ckpt_name, seed=1, save=False), prompt_id="s1").image
    engine.free(unload_models=False)
    b = engine.execute(t2i_graph(ckpt_name, seed=1, save=False), prompt_id="s1b").image
    c = engine.execute(t2i_graph(ckpt_name, seed=2, save=False), prompt_id="s2").image
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()


@pytest.mark.parametrize("sampler", builtin.SAMPLER_NAMES)
def test_every_sampler_runs(engine, ckpt_name, t2i_graph, sampler):
    r = engine.execute(t2i_graph(ckpt_name, sampler=sampler, scheduler="normal", save=False), prompt_id=sampler)
    assert r.ok, r.error
    assert r.image.size == (64, 64)


@pytest.mark.parametrize("scheduler", builtin.SCHEDULER_NAMES)
def test_every_scheduler_runs(engine, ckpt_name, t2i_graph, scheduler):
    r = engine.execute(t2i_graph(ckpt_name, sampler="euler", scheduler=scheduler, save=False),
                       prompt_id=scheduler)
    assert r.ok, r.error
    assert [e.data["max"] for e in r.events if e.type == "progress"] == [2, 2]
