"""The queue under load, /queue and /history editing, /free, and the informational routes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import WS, post, scale, texts, wait_history


@pytest.fixture
def gate(engine, monkeypatch):
    """Hold the server's worker inside its next prompt until the test opens the gate."""
    opened, entered = threading.Event(), threading.Event()
    real = engine.execute

    def held(*args, **kwargs):
        entered.set()
        opened.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "execute", held)
    yield entered, opened
    opened.set()


def test_two_hundred_concurrent_prompts_each_complete_once(server):
    def one(i):
        answer = requests.post(server.url + "/prompt", json={"prompt": scale(8 + i % 50, 8 + i // 50)}, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()["prompt_id"]

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(one, range(200)))
    assert len(set(ids)) == 200
    for pid in ids:
        assert wait_history(server, pid)["status"]["status_str"] == "success"
    history = requests.get(server.url + "/history", timeout=60).json()
    assert set(ids) <= set(history)
    running_pending = requests.get(server.url + "/queue", timeout=30).json()
    assert running_pending == {"queue_running": [], "queue_pending": []}


def test_queue_lists_deletes_and_clears_pending(server, gate):
    entered, opened = gate
    ws = WS(server.url)
    first = post(server, scale(20, 21), client_id=ws.client_id).json()
    assert entered.wait(30)
    later = [post(server, scale(20 + i, 22), client_id=ws.client_id).json() for i in range(4)]
    front = post(server, scale(30, 23), front=True).json()
    queue = requests.get(server.url + "/queue", timeout=30).json()
    assert [item[1] for item in queue["queue_running"]] == [first["prompt_id"]]
    running = queue["queue_running"][0]
    assert running[0] == first["number"] and running[3] == {"client_id": ws.client_id} and running[4] == ["3"]
    pending = {item[1]: item for item in queue["queue_pending"]}
    assert set(pending) == {a["prompt_id"] for a in later} | {front["prompt_id"]}
    assert min(queue["queue_pending"])[1] == front["prompt_id"]  # front=True runs next (negative number)
    assert requests.get(server.url + "/prompt", timeout=30).json()["exec_info"]["queue_remaining"] == 6

    requests.post(server.url + "/queue", json={"delete": [later[0]["prompt_id"], first["prompt_id"]]}, timeout=30)
    queue = requests.get(server.url + "/queue", timeout=30).json()
    assert len(queue["queue_pending"]) == 4 and len(queue["queue_running"]) == 1  # running is never deleted
    requests.post(server.url + "/api/queue", json={"clear": True}, timeout=30)
    assert requests.get(server.url + "/queue", timeout=30).json()["queue_pending"] == []
    opened.set()
    frames = ws.until_done(first["prompt_id"])
    ws.close()
    statuses = [m["data"]["status"]["exec_info"]["queue_remaining"] for m in texts(frames) if m["type"] == "status"]
    assert statuses[-1] == 0
    assert wait_history(server, first["prompt_id"])["status"]["completed"] is True
    for answer in later + [front]:
        assert requests.get(f"{server.url}/history/{answer['prompt_id']}", timeout=30).json() == {}


def test_history_max_items_offset_delete_clear(engine):
    from comfykit.server import create_app
    from comfykit.server.runner import start_background

    handle = start_background(engine, create_app(engine, max_history=3), "127.0.0.1", 0)
    try:
        ids = [post(handle, scale(40 + i, 9)).json()["prompt_id"] for i in range(5)]
        wait_history(handle, ids[-1])  # one worker, in order: the last done means all done
        history = requests.get(handle.url + "/history", timeout=30).json()
        assert list(history) == ids[2:]  # bounded to 3, oldest dropped, oldest first
        url = handle.url + "/history"
        assert list(requests.get(url, params={"max_items": 2}, timeout=30).json()) == ids[3:]
        assert list(requests.get(url, params={"max_items": 1, "offset": 1}, timeout=30).json()) == ids[3:4]
        assert list(requests.get(url, params={"offset": 2}, timeout=30).json()) == ids[4:]
        assert requests.get(url, params={"max_items": "x"}, timeout=30).status_code == 400
        assert requests.post(url, json={"delete": [ids[3]]}, timeout=30).status_code == 200
        assert list(requests.get(url, timeout=30).json()) == [ids[2], ids[4]]
        assert requests.get(f"{url}/{ids[3]}", timeout=30).json() == {}
        requests.post(handle.url + "/api/history", json={"clear": True}, timeout=30)
        assert requests.get(url, timeout=30).json() == {}
    finally:
        handle.stop()


def test_free_drops_the_caches(server):
    ws = WS(server.url)
    prompt = scale(77, 7)
    first = post(server, prompt, client_id=ws.client_id).json()["prompt_id"]
    ws.until_done(first)
    assert requests.post(server.url + "/free", json={"unload_models": True, "free_memory": True},
                         timeout=30).status_code == 200
    second = post(server, prompt, client_id=ws.client_id).json()["prompt_id"]
    frames = ws.until_done(second)
    ws.close()
    cached = next(m["data"]["nodes"] for m in texts(frames) if m["type"] == "execution_cached")
    assert cached == []  # without /free this prompt would have been fully cached


def test_informational_routes(server, demo_ckpt):
    url = server.url
    info = requests.get(url + "/object_info", timeout=60).json()
    assert "KSampler" in info and demo_ckpt in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert requests.get(url + "/api/object_info/KSampler", timeout=30).json() == {"KSampler": info["KSampler"]}
    assert requests.get(url + "/object_info/NoSuchNode", timeout=30).json() == {}
    models = requests.get(url + "/models", timeout=30).json()
    assert "checkpoints" in models and "loras" in models
    assert demo_ckpt in requests.get(url + "/models/checkpoints", timeout=30).json()
    assert requests.get(url + "/models/loras", timeout=30).json() == []
    assert requests.get(url + "/models/nonsense", timeout=30).status_code == 404
    assert requests.get(url + "/embeddings", timeout=30).json() == []
    stats = requests.get(url + "/system_stats", timeout=30).json()
    assert {"system", "devices"} <= set(stats) and stats["devices"][0]["type"] == "cpu"
    assert requests.get(url + "/api/features", timeout=30).json() == {"supports_preview_metadata": True,
                                                                      "max_upload_size": 100 * 1024 * 1024}
    assert requests.post(url + "/interrupt", timeout=30).status_code == 200  # idle: harmless
