"""Failures through a real server: validation, node errors, interrupts, a dead or hung server, socket drops."""

from __future__ import annotations

import os
import signal
import time

import pytest
from client_workflows import load_and_save, server_cmd, txt2img
from PIL import Image

import comfykit as ck
from comfykit.client import ComfyServer

LONG = 5000  # sampler steps: far more than any test waits for


def _first(job, kind):
    for event in job.events(timeout=60):
        if event.type == kind:
            return event
    raise AssertionError(f"the run ended without a {kind} event")


def test_invalid_prompt_raises_validation_error_with_node_errors(server, ckpt_name):
    prompt = txt2img(ckpt_name)
    prompt["3"]["inputs"]["sampler_name"] = "eulr"
    prompt["5"]["inputs"]["width"] = 8
    with pytest.raises(ck.ValidationError) as info:
        server.run(prompt, timeout=60)
    err = info.value
    assert err.error["type"] == "prompt_outputs_failed_validation"
    assert set(err.node_errors) == {"3", "5"}
    kinds = {e["type"] for entry in err.node_errors.values() for e in entry["errors"]}
    assert kinds == {"value_not_in_list", "value_smaller_than_min"}
    assert err.node_errors["3"]["dependent_outputs"] == ["9"]
    assert "node 3 (KSampler) input 'sampler_name'" in str(err)
    assert server._router.active() == []  # nothing left waiting for events


def test_bad_workflow_objects_are_refused_before_posting(server):
    with pytest.raises(ValueError, match="node '1' has no class_type"):
        server.run({"1": {"inputs": {}}}, timeout=60)
    with pytest.raises(TypeError, match="ck.Workflow or an API prompt dict"):
        server.run(42, timeout=60)


def test_execution_error_carries_node_and_traceback(server):
    prompt = txt2img("broken.safetensors")
    job = server.submit(prompt)
    events = list(job.events(timeout=60))
    with pytest.raises(ck.ExecutionError) as info:
        job.result(timeout=60)
    err = info.value
    assert err.node_id == "4" and err.node_type == "CheckpointLoaderSimple"
    assert err.prompt_id == job.prompt_id and err.traceback and err.exception_message
    assert events[-1].type == "execution_error"
    result = job._result
    assert result.status == "error" and result.error is err and "4" in result.executed


def test_interrupt_ends_the_run_and_the_server_goes_on(server, ckpt_name):
    job = server.submit(txt2img(ckpt_name, steps=LONG, prefix="interrupted"))
    _first(job, "progress")
    server.interrupt()
    with pytest.raises(ck.InterruptedError) as info:
        job.result(timeout=60)
    assert info.value.prompt_id == job.prompt_id and info.value.node_id == "3"
    assert server.run(txt2img(ckpt_name, steps=1, prefix="after"), timeout=60).ok


def test_ctrl_c_in_run_also_stops_the_prompt_on_the_server(server, ckpt_name):
    seen = []

    def press_ctrl_c(event):
        seen.append(event)
        if event.type == "progress" and event.data["value"] == 1:
            os.kill(os.getpid(), signal.SIGINT)  # what a notebook's stop button does to the kernel

    # A suite started in the background inherits SIGINT ignored; install Python's own handler for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            server.run(txt2img(ckpt_name, seed=11, steps=LONG, prefix="ctrlc"), on_event=press_ctrl_c,
                       timeout=60)
    finally:
        signal.signal(signal.SIGINT, previous)
        if seen and server.history(seen[0].prompt_id) is None:
            _stop_leftovers(server)  # never leave a 5000-step prompt for the next tests to queue behind
    prompt_id = seen[0].prompt_id
    deadline = time.monotonic() + 60
    while (item := server.history(prompt_id)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert item is not None, "the prompt kept running after Ctrl-C"
    assert item["status"]["messages"][-1][0] == "execution_interrupted"


def _stop_leftovers(server, timeout: float = 60.0) -> None:
    """Interrupt whatever still runs on the server and wait (bounded) until its queue is empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = server.queue()
        if not (queue.get("queue_running") or queue.get("queue_pending")):
            return
        server.interrupt()
        time.sleep(0.5)


def test_job_interrupt_of_a_pending_prompt(server, ckpt_name):
    running = server.submit(txt2img(ckpt_name, steps=LONG, prefix="blocker"))
    pending = server.submit(txt2img(ckpt_name, seed=2, steps=LONG, prefix="pending"))
    _first(running, "progress")
    pending.interrupt()  # still queued: deleted from the queue, ends as interrupted without running
    running.interrupt()
    with pytest.raises(ck.InterruptedError):
        running.result(timeout=60)
    with pytest.raises(ck.InterruptedError):
        pending.result(timeout=60)
    assert "3" not in pending._result.executed


def test_socket_drop_result_comes_from_history(server, tmp_path):
    name = server.upload_image(Image.new("RGB", (16, 16), (9, 9, 9)), name="drop.png", overwrite=True)
    client = ComfyServer.connect(server.url)
    try:
        # cut the socket before the run and keep it cut: not one message of the run arrives
        client._ensure_listening()
        client._socket.drop(pause=60)
        job = client.submit(load_and_save(name, "drop"))
        result = job.result(timeout=60)
        assert client._socket.reconnects == 0
        assert result.ok and result.image.getpixel((0, 0)) == (9, 9, 9)
        assert result.outputs["2"]["images"][0]["filename"].startswith("drop_")
        # how the run ended is recovered from its history item
        assert [e.type for e in result.events] == ["execution_success"]
    finally:
        client.close()


def test_socket_drop_reconnects_with_the_same_client_id(server, ckpt_name):
    client = ComfyServer.connect(server.url)
    try:
        job = client.submit(txt2img(ckpt_name, seed=31, steps=3, prefix="reconnect"))
        _first(job, "progress")
        client._socket.drop()
        result = job.result(timeout=90)
        assert result.ok and result.image is not None
        assert client._socket.reconnects >= 1
        assert client.run(txt2img(ckpt_name, seed=32, steps=1, prefix="reconnect"), timeout=60).ok
    finally:
        client.close()


@pytest.fixture
def doomed(client_models, tmp_path):
    """A server of its own for the tests that stop or kill it."""
    srv = ComfyServer.launch(cmd=server_cmd(client_models, tmp_path), timeout=90)
    yield srv
    os.kill(srv.process.pid, signal.SIGCONT) if srv.process.alive() else None
    srv.stop()


def test_hung_then_killed_server_raises_server_error(doomed, ckpt_name):
    # an attached client knows no process: it notices the hang through its heartbeat
    watcher = ComfyServer.connect(doomed.url, heartbeat=0.5, dead_after=2, request_timeout=2)
    try:
        job = watcher.submit(txt2img(ckpt_name, steps=LONG, prefix="hung"))
        _first(job, "progress")
        os.kill(doomed.process.pid, signal.SIGSTOP)
        with pytest.raises(ck.ServerError, match="stopped answering"):
            job.result(timeout=60)
    finally:
        watcher.close()
    os.kill(doomed.process.pid, signal.SIGCONT)
    # the launching client watches its process: a kill is noticed at the next heartbeat
    job = doomed.submit(txt2img(ckpt_name, seed=8, steps=LONG, prefix="killed"))
    time.sleep(0.5)
    os.kill(doomed.process.pid, signal.SIGKILL)
    with pytest.raises(ck.ServerError, match="exited with code -9") as info:
        job.result(timeout=60)
    assert str(doomed.log_file) in str(info.value)
