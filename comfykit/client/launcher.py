"""Start a ComfyUI server as a subprocess, wait until it answers, and stop it (process group) for sure."""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import requests

from ..errors import ServerError

#: Log lines that explain a failed start better than the exit code does, with what to do about them.
_HINTS = (
    ("Torch not compiled with CUDA enabled", "this torch has no CUDA: pass args=['--cpu']"),
    ("address already in use", "the port is taken: pass port=None to pick a free one"),
    ("error while attempting to bind", "the port is taken: pass port=None to pick a free one"),
    ("No module named", "a Python package is missing in the server's environment (see the log)"),
)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port`` (we could not bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def tail(path: str | Path | None, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' when it cannot be read)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def explain(message: str, log_file: str | Path | None) -> ServerError:
    """A ServerError carrying the log tail and, when the log shows a known cause, what to do."""
    text = tail(log_file)
    hints = [hint for needle, hint in _HINTS if needle.lower() in text.lower()]
    parts = [message]
    if hints:
        parts.append("hint: " + "; ".join(dict.fromkeys(hints)))
    if log_file:
        parts.append(f"log file: {log_file}")
    if text:
        parts.append("--- last lines of the server log ---\n" + text)
    err = ServerError("\n".join(parts))
    err.log_tail = text  # type: ignore[attr-defined]
    return err


def build_command(path: str | Path | None, cmd: Sequence[str] | str | None, *, host: str, port: int,
                  args: Sequence[str], python: str) -> tuple[list[str], Path | None]:
    """The argv to run and its working directory, from a ComfyUI checkout or a custom command line."""
    if cmd is not None:
        if path is not None:
            raise ValueError("give either a ComfyUI path or cmd=[...], not both")
        argv = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
        if not argv:
            raise ValueError("cmd is empty; give the server's command line, e.g. [sys.executable, 'main.py']")
        substituted = any("{port}" in a for a in argv)
        argv = [a.replace("{port}", str(port)).replace("{host}", host) for a in argv]
        if not substituted and "--port" not in argv:
            argv += ["--port", str(port)]
        return argv + [str(a) for a in args], None
    if path is None:
        raise ValueError("launch() needs the path of a ComfyUI checkout (the folder with main.py) or cmd=[...]")
    root = Path(path).expanduser()
    if not (root / "main.py").is_file():
        what = "does not exist" if not root.exists() else "has no main.py"
        raise ServerError(f"cannot launch ComfyUI: {root} {what}; pass the folder of a ComfyUI checkout "
                          f"(git clone https://github.com/comfyanonymous/ComfyUI)")
    argv = [python, "main.py", "--listen", host, "--port", str(port), "--disable-auto-launch",
            *[str(a) for a in args]]
    return argv, root


def port_from_argv(argv: Sequence[str]) -> int | None:
    """The value of ``--port`` (or ``--port=N``) in a command line, if any."""
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv) and argv[i + 1].isdigit():
            return int(argv[i + 1])
        if arg.startswith("--port=") and arg[7:].isdigit():
            return int(arg[7:])
    return None


def option_from_argv(argv: Sequence[str], name: str) -> str | None:
    """The value of a ``--name VALUE`` / ``--name=VALUE`` option in a command line, if any."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


class ServerProcess:
    """A server subprocess in its own process group, its log file, and a guaranteed stop."""

    def __init__(self, argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
                 log_file: str | Path | None = None):
        self.argv = argv
        if log_file is None:
            fd, name = tempfile.mkstemp(prefix="comfyserver-", suffix=".log")
            os.close(fd)
            log_file = name
        self.log_file = Path(log_file)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.log_file, "ab") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            log.flush()
            try:
                # a new session makes the server the leader of its own group, so stop() also reaches workers
                self.process = subprocess.Popen(argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                                stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=(os.name == "posix"))
            except OSError as exc:
                raise explain(f"cannot start the server command {argv[0]!r}: {exc}", self.log_file) from exc
        self._atexit = self.stop
        atexit.register(self._atexit)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def wait_ready(self, url: str, timeout: float) -> dict:
        """Poll ``GET /system_stats`` until it answers; raise ServerError with the log tail on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise explain(f"the server exited with code {code} before answering at {url}", self.log_file)
            try:
                answer = requests.get(f"{url}/system_stats", timeout=2)
                if answer.ok:
                    return answer.json()
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise explain(f"the server did not answer at {url}/system_stats within {timeout:g}s "
                              f"(raise timeout=... if it is just slow to start)", self.log_file)
            time.sleep(0.25)

    def stop(self, grace: float = 10.0) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL after ``grace`` s) and reap it: no zombie."""
        with contextlib.suppress(Exception):
            atexit.unregister(self._atexit)
        proc = self.process
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # the leader may be gone while its children linger: kill what is left of the group either way
        self._signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def _signal(self, sig: int) -> None:
        if os.name == "posix":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)
        elif self.process.poll() is None:  # pragma: no cover - Windows has no process groups here
            with contextlib.suppress(OSError):
                self.process.kill() if sig != signal.SIGTERM else self.process.terminate()

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited {self.returncode}"
        return f"ServerProcess(pid={self.pid}, {state}, log={str(self.log_file)!r})"
