"""Executor ordering, caching, events, errors and interrupts, on tiny test-only nodes (no models needed)."""

from __future__ import annotations

import threading
import time

import pytest

from comfykit.engine.executor import Executor
from comfykit.errors import ExecutionError, InterruptedError


class Const:
    FUNCTION = "run"
    RETURN_TYPES = ("INT",)

    def run(self, value):
        CALLS.append(("Const", value))
        return (value,)


class Add:
    FUNCTION = "run"
    RETURN_TYPES = ("INT",)

    def run(self, a, b):
        CALLS.append(("Add", a, b))
        return (a + b,)


class Show:
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    def run(self, value):
        CALLS.append(("Show", value))
        return {"ui": {"text": [str(value)]}}


class Boom:
    FUNCTION = "run"
    RETURN_TYPES = ("INT",)
    ERROR = ValueError("bad value 13")

    def run(self, value):
        raise Boom.ERROR


class Slow:
    FUNCTION = "run"
    RETURN_TYPES = ("INT",)

    def run(self, value, steps=200):
        for i in range(steps):
            time.sleep(0.01)
            self.ctx.progress(i + 1, steps)
        return (value,)


class Volatile:
    FUNCTION = "run"
    RETURN_TYPES = ("INT",)

    def IS_CHANGED(self, value=None):  # noqa: N802
        return float("nan")

    def run(self, value):
        CALLS.append(("Volatile", value))
        return (value,)


CALLS: list = []
NODES = {c.__name__: c for c in (Const, Add, Show, Boom, Slow, Volatile)}


def graph(a=1, b=2):
    return {"1": {"class_type": "Const", "inputs": {"value": a}},
            "2": {"class_type": "Const", "inputs": {"value": b}},
            "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
            "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}


@pytest.fixture
def ex():
    CALLS.clear()
    return Executor(NODES)


def types(result):
    return [e.type for e in result.events]


def test_runs_outputs_and_emits_comfyui_messages(ex):
    r = ex.execute(graph(), "p1")
    assert r.status == "success" and r.error is None
    assert r.outputs == {"4": {"text": ["3"]}}
    assert types(r) == ["execution_start", "execution_cached", "executing", "executing", "executing",
                        "executing", "executed", "execution_success"]
    executed = r.events[6]
    assert executed.data == {"node": "4", "display_node": "4", "output": {"text": ["3"]}, "prompt_id": "p1"}
    assert set(r.events[0].data) == {"prompt_id", "timestamp"}
    assert set(r.events[1].data) == {"nodes", "prompt_id", "timestamp"}
    assert r.events[2].data == {"node": "2", "display_node": "2", "prompt_id": "p1"}  # DFS stack: last input first
    assert r.executed == ["2", "1", "3", "4"]
    assert set(r.timings) == {"1", "2", "3", "4"}


def test_identical_rerun_runs_nothing_and_replays_executed(ex):
    ex.execute(graph(), "p1")
    CALLS.clear()
    r = ex.execute(graph(), "p2")
    assert CALLS == [] and r.executed == []
    assert r.events[1].data["nodes"] == ["1", "2", "3", "4"]
    assert types(r) == ["execution_start", "execution_cached", "executed", "execution_success"]
    assert r.events[2].data["output"] == {"text": ["3"]}
    assert r.outputs == {"4": {"text": ["3"]}}


def test_changed_widget_reruns_only_descendants(ex):
    ex.execute(graph(), "p1")
    r = ex.execute(graph(b=5), "p2")
    assert r.executed == ["2", "3", "4"]
    assert r.events[1].data["nodes"] == ["1"]
    assert r.outputs["4"] == {"text": ["6"]}


def test_classic_cache_forgets_a_when_b_ran(ex):
    ex.execute(graph(b=2), "a")
    ex.execute(graph(b=5), "b")
    r = ex.execute(graph(b=2), "a2")
    assert r.executed == ["2", "3", "4"]


def test_lru_cache_keeps_older_results():
    CALLS.clear()
    ex = Executor(NODES, cache="lru", cache_size=20)
    ex.execute(graph(b=2), "a")
    ex.execute(graph(b=5), "b")
    r = ex.execute(graph(b=2), "a2")
    assert r.executed == []
    assert r.outputs["4"] == {"text": ["3"]}


def test_lru_cache_evicts_past_its_size():
    ex = Executor(NODES, cache="lru", cache_size=4)
    for b in range(2, 7):
        ex.execute(graph(b=b), f"p{b}")
    r = ex.execute(graph(b=2), "again")
    assert "3" in r.executed


def test_no_cache_recomputes_everything():
    ex = Executor(NODES, cache="none")
    ex.execute(graph(), "a")
    r = ex.execute(graph(), "b")
    assert sorted(r.executed) == ["1", "2", "3", "4"] and r.events[1].data["nodes"] == []


def test_cache_key_ignores_node_ids(ex):
    ex.execute(graph(), "a")
    renumbered = {"10": {"class_type": "Const", "inputs": {"value": 1}},
                  "20": {"class_type": "Const", "inputs": {"value": 2}},
                  "30": {"class_type": "Add", "inputs": {"a": ["10", 0], "b": ["20", 0]}},
                  "40": {"class_type": "Show", "inputs": {"value": ["30", 0]}}}
    r = ex.execute(renumbered, "b")
    assert r.executed == [] and r.outputs == {"40": {"text": ["3"]}}


def test_identical_subgraphs_share_one_entry(ex):
    g = graph()
    g["5"] = {"class_type": "Const", "inputs": {"value": 1}}  # twin of node 1
    g["6"] = {"class_type": "Add", "inputs": {"a": ["5", 0], "b": ["2", 0]}}  # twin of node 3
    g["7"] = {"class_type": "Show", "inputs": {"value": ["6", 0]}}  # twin of node 4
    r = ex.execute(g, "p")
    assert [c for c in CALLS if c[0] == "Add"] == [("Add", 1, 2)]
    assert r.outputs["7"] == {"text": ["3"]} and r.outputs["4"] == {"text": ["3"]}


def test_nan_is_changed_always_reruns(ex):
    g = {"1": {"class_type": "Volatile", "inputs": {"value": 1}},
         "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    ex.execute(g, "a")
    r = ex.execute(g, "b")
    assert r.executed == ["1", "2"]


def test_only_requested_outputs_run(ex):
    g = graph()
    g["5"] = {"class_type": "Show", "inputs": {"value": ["1", 0]}}
    r = ex.execute(g, "p", outputs=["5"])
    assert r.executed == ["1", "5"] and list(r.outputs) == ["5"]


def test_node_error_reports_comfyui_shape_and_engine_recovers(ex):
    g = graph()
    g["3"] = {"class_type": "Boom", "inputs": {"value": ["1", 0]}}
    r = ex.execute(g, "bad")
    assert r.status == "error" and isinstance(r.error, ExecutionError)
    data = r.events[-1].data
    assert r.events[-1].type == "execution_error"
    assert list(data) == ["prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
                          "traceback", "current_inputs", "current_outputs", "timestamp"]
    assert data["node_id"] == "3" and data["node_type"] == "Boom"
    assert data["exception_message"] == "bad value 13" and data["exception_type"] == "ValueError"
    assert data["current_inputs"] == {"value": [1]} and data["executed"] == ["1"]
    assert isinstance(data["traceback"], list) and data["traceback"]
    assert r.error.node_id == "3" and "bad value 13" in str(r.error)
    ok = ex.execute(graph(), "good")
    assert ok.status == "success" and ok.outputs["4"] == {"text": ["3"]}


def _oom_frees(error):
    freed = []
    ex = Executor(NODES, on_oom=lambda: freed.append(True))
    g = graph()
    g["3"] = {"class_type": "Boom", "inputs": {"value": ["1", 0]}}
    old = Boom.ERROR
    Boom.ERROR = error
    try:
        r = ex.execute(g, "oom")
    finally:
        Boom.ERROR = old
    assert r.status == "error"
    return freed, r


def test_memory_error_frees_first():
    freed, r = _oom_frees(MemoryError("out of memory"))
    assert freed == [True] and r.error.exception_type == "MemoryError"


def test_torch_out_of_memory_frees_first_and_a_lookalike_does_not():
    torch = pytest.importorskip("torch")
    freed, r = _oom_frees(torch.OutOfMemoryError("CUDA out of memory"))
    assert freed == [True] and r.error.exception_type == "torch.OutOfMemoryError"

    class OutOfMemoryError(Exception):  # same name, not torch's: a node's own error is not an OOM
        pass

    freed, _ = _oom_frees(OutOfMemoryError("nope"))
    assert freed == []


def test_interrupt_from_another_thread_stops_within_a_step(ex):
    g = {"1": {"class_type": "Slow", "inputs": {"value": 1}},
         "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    progress = []
    started = threading.Event()

    def on_event(e):
        if e.type == "progress":
            progress.append(e.data["value"])
            started.set()

    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", ex.execute(g, "slow", on_event=on_event)))
    t.start()
    assert started.wait(10)
    ex.interrupt_flag.set()
    t.join(10)
    r = out["r"]
    assert r.status == "interrupted" and isinstance(r.error, InterruptedError)
    assert r.events[-1].type == "execution_interrupted"
    assert list(r.events[-1].data) == ["prompt_id", "node_id", "node_type", "executed", "timestamp"]
    assert r.events[-1].data["node_id"] == "1"
    assert max(progress) < 200
    assert ex.execute(graph(), "after").status == "success"


def test_progress_events_have_comfyui_shape(ex):
    g = {"1": {"class_type": "Slow", "inputs": {"value": 1, "steps": 3}},
         "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    r = ex.execute(g, "p")
    prog = [e.data for e in r.events if e.type == "progress"]
    assert prog == [{"value": i, "max": 3, "prompt_id": "p", "node": "1"} for i in (1, 2, 3)]


def test_interrupt_between_nodes_names_the_next_node(ex):
    class Stopper(Const):
        def run(self, value):
            ex.interrupt_flag.set()  # as if interrupt() arrived while this node ran
            return (value,)

    ex.nodes = {**NODES, "Stopper": Stopper}
    g = {"1": {"class_type": "Stopper", "inputs": {"value": 1}},
         "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    r = ex.execute(g, "p")
    assert [e.type for e in r.events][-2:] == ["executing", "execution_interrupted"]
    assert r.events[-1].data["node_id"] == "2" and r.events[-1].data["executed"] == ["1"]
    assert r.executed == ["1"] and CALLS == []
