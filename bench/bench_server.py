"""How much the HTTP/WebSocket server adds on top of calling the engine directly.

Runs a trivial model-free prompt (LoadImage -> ImageScale -> PreviewImage, a new width each time so it really
runs) N times directly through ``engine.execute`` and N times through POST /prompt + WebSocket "executing null",
interleaved one at a time (latency), then N posted at once from 8 threads (throughput). Prints a table and appends it to
docs/benchmarks.md.

    python bench/bench_server.py [--n 200] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import websocket
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def prompt(width: int) -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "dot.png"}},
            "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                         "width": width, "height": 8, "crop": "disabled"}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}


def direct(engine, width: int) -> float:
    start = time.perf_counter()
    result = engine.execute(prompt(width), prompt_id=str(uuid.uuid4()))
    elapsed = time.perf_counter() - start
    assert result.ok, result.error
    return elapsed


class Client:
    """A keep-alive http.client connection: requests costs ~3-4 ms per call itself, which is not the server's."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port))

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        return json.loads(self.conn.getresponse().read() or b"{}")


class Watcher:
    """POST /prompt one at a time and wait for its ``executing {node: null}`` on the WebSocket."""

    def __init__(self, url: str):
        self.client_id = uuid.uuid4().hex
        self.ws = websocket.create_connection(url.replace("http://", "ws://") + f"/ws?clientId={self.client_id}",
                                              timeout=60)
        self.ws.recv()  # the hello status
        self.client = Client(url)

    def run(self, width: int) -> float:
        start = time.perf_counter()
        pid = self.client.call("POST", "/prompt", {"prompt": prompt(width), "client_id": self.client_id})
        pid = pid["prompt_id"]
        while True:
            raw = self.ws.recv()
            if isinstance(raw, str):
                msg = json.loads(raw)
                if msg["type"] == "executing" and msg["data"].get("node") is None \
                        and msg["data"].get("prompt_id") == pid:
                    return time.perf_counter() - start


def http_throughput(url: str, widths) -> float:
    local = threading.local()

    def post(w: int) -> str:
        if not hasattr(local, "client"):
            local.client = Client(url)
        return local.client.call("POST", "/prompt", {"prompt": prompt(w)})["prompt_id"]

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(post, widths))
    client = Client(url)
    while client.call("GET", "/prompt")["exec_info"]["queue_remaining"]:
        time.sleep(0.002)
    elapsed = time.perf_counter() - start
    history = client.call("GET", "/history")
    assert all(pid in history for pid in ids)
    return len(ids) / elapsed


def separate_process(tmp_path: Path, engine, widths) -> tuple[list[float], list[float]]:
    """Latency with the server in its own process (``python -m comfykit.server``), as ComfyServer sees it.

    Interleaved with direct runs here too (direct, HTTP), so that its added latency is against the same load."""
    cmd = [sys.executable, "-m", "comfykit.server", "--port", "0", "--cpu", "--models-dir", str(tmp_path / "models"),
           "--input-directory", str(tmp_path / "input"), "--output-directory", str(tmp_path / "output"),
           "--temp-directory", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        url = None
        while url is None:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the server process exited before printing its address")
            found = re.search(r"To see the GUI go to: (http://\S+)", line)
            url = found.group(1) if found else None
        watcher = Watcher(url)
        for w in range(8, 18):
            watcher.run(w)
        direct_t, apart_t = [], []
        for w in widths:
            direct_t.append(direct(engine, w))  # widths this engine has not run yet
            apart_t.append(watcher.run(w))
        return direct_t, apart_t
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="prompts per phase")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = parser.parse_args()
    import torch

    from comfykit.engine import Engine
    from comfykit.server import serve

    torch.set_num_threads(1)
    n = args.n
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "input").mkdir()
        Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "input" / "dot.png")
        engine = Engine(tmp_path / "models", output_dir=tmp_path / "output", input_dir=tmp_path / "input",
                        temp_dir=tmp_path / "temp", device="cpu")
        server = serve(engine, port=0)
        try:
            watcher = Watcher(server.url)
            for w in range(8, 18):  # warm-up: imports, first LoadImage, connections
                direct(engine, w)
                watcher.run(w + 1000)
            # Interleaved, so that both paths see the same background load on a shared machine.
            direct_t, http_t = [], []
            for w in range(100, 100 + 2 * n, 2):
                direct_t.append(direct(engine, w))
                http_t.append(watcher.run(w + 1))
            watcher.ws.close()
            rate = http_throughput(server.url, range(100 + 2 * n, 100 + 3 * n))
        finally:
            server.stop()
        direct2_t, apart_t = separate_process(tmp_path, engine, range(100 + 3 * n, 100 + 4 * n))

    d_ms, h_ms = statistics.median(direct_t) * 1000, statistics.median(http_t) * 1000
    p_ms, d2_ms = statistics.median(apart_t) * 1000, statistics.median(direct2_t) * 1000
    rows = [
        ("engine.execute, one at a time", f"{d_ms:.2f}", f"{1000 / d_ms:.0f}", "1.00"),
        ("POST /prompt -> WS done, one at a time (in-process)", f"{h_ms:.2f}", f"{1000 / h_ms:.0f}", f"{h_ms / d_ms:.2f}"),
        ("same, server in its own process", f"{p_ms:.2f}", f"{1000 / p_ms:.0f}", f"{p_ms / d2_ms:.2f}"),
        ("POST /prompt x N from 8 threads (in-process)", "", f"{rate:.0f}", f"{(1000 / d_ms) / rate:.2f}"),
    ]
    added = h_ms - d_ms
    header = "| path | median ms/prompt | prompts/s | ratio vs direct |\n|---|---|---|---|"
    table = header + "\n" + "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)
    summary = (f"Added latency per prompt through HTTP + WebSocket: **{added:.2f} ms** with client and server "
               f"in one process, **{p_ms - d2_ms:.2f} ms** with the server in its own process (direct runs interleaved "
               f"with it: median {d2_ms:.2f} ms) (target < 5 ms).")
    print(table)
    print(summary)
    if args.no_write:
        return

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
               f"torch {torch.__version__}, load avg {load:.1f}")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = ROOT / "docs" / "benchmarks.md"
    if not doc.exists():
        doc.write_text("# Benchmarks\n")
    with doc.open("a") as fh:
        fh.write(f"\n## Server overhead (bench/bench_server.py)\n\n{stamp}; {machine}; N={n} trivial prompts "
                 f"(LoadImage -> ImageScale -> PreviewImage).\n\n{table}\n\n{summary}\n")


if __name__ == "__main__":
    main()
