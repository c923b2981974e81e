"""Launching and attaching fail fast with a ServerError that says why (and shows the server's log)."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from comfykit import ServerError
from comfykit.client import ComfyServer
from comfykit.client.launcher import build_command, free_port


def test_bad_path_names_the_folder(tmp_path):
    start = time.monotonic()
    with pytest.raises(ServerError, match="has no main.py"):
        ComfyServer.launch(tmp_path, args=["--cpu"])
    with pytest.raises(ServerError, match="does not exist"):
        ComfyServer.launch(tmp_path / "nope")
    assert time.monotonic() - start < 5


def test_command_that_exits_at_once_shows_its_log(tmp_path):
    log = tmp_path / "server.log"
    code = "import sys; print('Torch not compiled with CUDA enabled'); sys.exit(3)"
    with pytest.raises(ServerError) as info:
        ComfyServer.launch(cmd=[sys.executable, "-c", code, "{port}"], log_file=log, timeout=30)
    message = str(info.value)
    assert "exited with code 3" in message
    assert "Torch not compiled with CUDA enabled" in message  # the log tail
    assert "--cpu" in message  # and the hint for that log line
    assert str(log) in message


def test_main_py_that_crashes_shows_its_traceback(tmp_path):
    (tmp_path / "main.py").write_text("raise SystemExit('boom: no models folder')\n")
    with pytest.raises(ServerError, match="boom: no models folder"):
        ComfyServer.launch(tmp_path, timeout=30)


def test_port_already_taken():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(ServerError, match=f"port {port} .* already in use"):
            ComfyServer.launch(cmd=[sys.executable, "-c", "pass"], port=port)


def test_server_that_never_answers_times_out_and_is_stopped(tmp_path):
    with pytest.raises(ServerError, match="did not answer .* within 1s") as info:
        ComfyServer.launch(cmd=[sys.executable, "-c", "import time; print('loading...', flush=True); "
                                "time.sleep(60)"], timeout=1, log_file=tmp_path / "log.txt")
    assert "loading..." in str(info.value)


def test_connect_to_nothing_is_a_clear_error():
    port = free_port()
    with pytest.raises(ServerError, match=f"no ComfyUI server answers at http://127.0.0.1:{port}"):
        ComfyServer.connect(f"127.0.0.1:{port}", timeout=2)


def test_command_line_building(tmp_path):
    (tmp_path / "main.py").write_text("")
    argv, cwd = build_command(tmp_path, None, host="127.0.0.1", port=1234, args=["--cpu"], python="py")
    assert argv == ["py", "main.py", "--listen", "127.0.0.1", "--port", "1234", "--disable-auto-launch", "--cpu"]
    assert cwd == tmp_path
    argv, _ = build_command(None, ["srv", "--port={port}"], host="h", port=5, args=[], python="py")
    assert argv == ["srv", "--port=5"]
    argv, _ = build_command(None, "srv --x", host="h", port=5, args=["--cpu"], python="py")
    assert argv == ["srv", "--x", "--port", "5", "--cpu"]
    with pytest.raises(ValueError, match="either"):
        build_command(tmp_path, ["x"], host="h", port=5, args=[], python="py")
