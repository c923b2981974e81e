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


#: The watchdog: a tiny Python process in a session of its own that holds the read end of a pipe whose only
#: write end stays in this process. When this process dies, however it dies (SIGKILL included), the pipe
#: reaches EOF and the watchdog ends the server's process group: TERM, then KILL after the grace time.
#: A "q" byte first (a normal stop) lets it exit without touching anything.
_WATCHDOG = """
import os, signal, sys, time
fd, pgid, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
class Stop(Exception):
    pass
def stop(*_):
    raise Stop
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGHUP, stop)
try:
    while True:
        data = os.read(fd, 64)
        if not data:
            break
        if b"q" in data:
            sys.exit(0)
except (Stop, OSError):
    pass
def alive():
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False
try:
    os.killpg(pgid, signal.SIGTERM)
except OSError:
    sys.exit(0)
deadline = time.monotonic() + grace
while time.monotonic() < deadline and alive():
    time.sleep(0.1)
try:
    os.killpg(pgid, signal.SIGKILL)
except OSError:
    pass
"""


def _start_watchdog(pgid: int, grace: float) -> tuple[subprocess.Popen | None, int | None]:
    """Start the watchdog of process group ``pgid``; returns it and the pipe end this process keeps."""
    import sys

    read_end, write_end = os.pipe()  # both non-inheritable: only the watchdog gets read_end (pass_fds)
    try:
        watchdog = subprocess.Popen([sys.executable, "-S", "-c", _WATCHDOG, str(read_end), str(pgid), str(grace)],
                                    pass_fds=(read_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:  # no watchdog: atexit and stop() still end the server, only a hard crash would orphan it
        os.close(write_end)
        return None, None
    finally:
        os.close(read_end)
    return watchdog, write_end


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
        self._watchdog, self._lifeline = (None, None)
        if os.name == "posix":
            self._watchdog, self._lifeline = _start_watchdog(self.process.pid, grace=10.0)
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
        self._release_watchdog()

    def _release_watchdog(self) -> None:
        """Tell the watchdog the server is stopped, so it exits without signalling anything."""
        if self._lifeline is not None:
            with contextlib.suppress(OSError):
                os.write(self._lifeline, b"q")
            with contextlib.suppress(OSError):
                os.close(self._lifeline)
            self._lifeline = None
        if self._watchdog is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(5)
            self._watchdog = None

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
