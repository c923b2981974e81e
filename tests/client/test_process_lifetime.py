"""A launched server dies with its process group: on stop(), at the end of a with block, at interpreter exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from comfykit.client import ComfyServer

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")

#: A stand-in server that answers /system_stats at once and has a child process of its own (like a worker).
FAKE_SERVER = textwrap.dedent("""
    import http.server, json, subprocess, sys
    port, pids = int(sys.argv[sys.argv.index("--port") + 1]), sys.argv[1]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pids, "w") as fh:
        json.dump({"server": __import__("os").getpid(), "child": child.pid}, fh)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"system": {"argv": sys.argv}, "devices": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
""")


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` no longer runs (absent, or a zombie its new parent has yet to reap)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status")
        try:
            state = next(line for line in status.read_text().splitlines() if line.startswith("State:"))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            return True
        if "Z" in state.split()[1]:
            return True
        time.sleep(0.1)
    return False


def test_with_block_stops_the_whole_process_group(tmp_path):
    pids_file = tmp_path / "pids.json"
    with ComfyServer.launch(cmd=[sys.executable, "-c", FAKE_SERVER, str(pids_file)], timeout=30) as srv:
        assert srv.system_stats()["system"]["argv"][-2] == "--port"
        pids = json.loads(pids_file.read_text())
        process = srv.process.process
    assert process.poll() is not None  # reaped by stop(): no zombie left behind
    assert _gone(pids["server"]) and _gone(pids["child"])


def test_interpreter_exit_stops_a_server_nobody_stopped(tmp_path):
    pids_file = tmp_path / "pids.json"
    script = (f"import sys; from comfykit.client import ComfyServer\n"
              f"srv = ComfyServer.launch(cmd=[sys.executable, '-c', {FAKE_SERVER!r}, {str(pids_file)!r}], "
              f"timeout=30)\nprint(srv.url)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pids = json.loads(pids_file.read_text())
    assert _gone(pids["server"]) and _gone(pids["child"])


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_parent_that_dies_takes_its_server_along(tmp_path, how):
    import signal

    pids_file = tmp_path / "pids.json"
    script = (f"import sys, time; from comfykit.client import ComfyServer\n"
              f"srv = ComfyServer.launch(cmd=[sys.executable, '-c', {FAKE_SERVER!r}, {str(pids_file)!r}], "
              f"timeout=30)\nprint('ready', flush=True)\ntime.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        pids = json.loads(pids_file.read_text())
        assert not _gone(pids["server"], timeout=0.5)
        parent.send_signal(getattr(signal, how))  # no atexit runs: only the watchdog can clean up
        parent.wait(30)
        assert _gone(pids["server"], timeout=30) and _gone(pids["child"], timeout=30)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)


def test_a_normal_stop_ends_the_watchdog_quietly(tmp_path):
    pids_file = tmp_path / "pids.json"
    srv = ComfyServer.launch(cmd=[sys.executable, "-c", FAKE_SERVER, str(pids_file)], timeout=30)
    watchdog = srv.process._watchdog
    assert watchdog is not None and watchdog.poll() is None
    srv.stop()
    assert watchdog.wait(30) == 0 and srv.process._watchdog is None
