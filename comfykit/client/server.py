"""``ComfyServer``: a ComfyUI server (launched here or already running) used as a comfykit Backend."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import logging
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import requests

from ..errors import InterruptedError, ServerError, ValidationError
from ..events import EXECUTION_INTERRUPTED, Event, EventCallback
from ..job import Backend, Job
from ..result import Result
from .collect import build_result, history_item
from .launcher import (
    ServerProcess,
    build_command,
    explain,
    free_port,
    option_from_argv,
    port_from_argv,
    port_in_use,
)
from .router import Router, RunState
from .wsock import EventSocket

log = logging.getLogger(__name__)


def _normalize_url(url: str) -> str:
    return split_url(url)[0]


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """The base URL, and the auth headers its ``user:password@`` part or ``?token=`` query stood for.

    A link from ``ck.share`` (``https://x.ngrok.app/?token=...``) thus works as it is.
    """
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    headers: dict[str, str] = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    token = parse_qs(parts.query).get("token")
    if token:
        headers["Authorization"] = f"Bearer {token[0]}"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), headers


class ComfyServer(Backend):
    """A ComfyUI server driven over HTTP and WebSocket, with the same ``run``/``submit``/events as Engine.

    >>> srv = ComfyServer.launch("/content/ComfyUI", args=["--cpu"])     # doctest: +SKIP
    >>> srv.run(wf).image                                                 # doctest: +SKIP
    >>> srv = ComfyServer.connect("http://127.0.0.1:8188")                # doctest: +SKIP
    """

    def __init__(self, url: str, *, process: ServerProcess | None = None, preview_format: str = "metadata",
                 output_dir: str | Path | None = None, request_timeout: float = 30.0,
                 heartbeat: float = 3.0, dead_after: float = 20.0, headers: dict[str, str] | None = None):
        if preview_format not in ("metadata", "legacy"):
            raise ValueError(f"preview_format must be 'metadata' or 'legacy', not {preview_format!r}")
        self.url, url_headers = split_url(url)
        self.headers = {**url_headers, **(headers or {})}  # e.g. Authorization for a shared server
        self.process = process
        self.preview_format = preview_format
        self.output_dir = Path(output_dir) if output_dir else None
        self.request_timeout = request_timeout
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.client_id = uuid.uuid4().hex
        self._http = requests.Session()
        self._http.headers.update(self.headers)
        self._router = Router(self._on_done, lambda: not self._socket.uses_metadata_previews)
        self._socket = EventSocket(self.url, self.client_id, preview_format=preview_format,
                                   on_text=self._router.on_text, on_binary=self._router.on_binary,
                                   on_idle=self._router.flush, on_reconnect=self._on_reconnect,
                                   headers=self.headers)
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        self._closed = threading.Event()
        self._unreachable_since: float | None = None

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def connect(cls, url: str = "http://127.0.0.1:8188", *, timeout: float = 10.0, **options: Any) -> ComfyServer:
        """Attach to a running server; raises ServerError when ``GET /system_stats`` does not answer."""
        base, url_headers = split_url(url)
        headers = {**url_headers, **(options.get("headers") or {})}
        try:
            answer = requests.get(f"{base}/system_stats", timeout=timeout, headers=headers)
            answer.raise_for_status()
            answer.json()
        except (requests.RequestException, ValueError) as exc:
            hint = " (it needs credentials: headers={'Authorization': ...})" if "401" in str(exc) else ""
            raise ServerError(f"no ComfyUI server answers at {base}/system_stats ({exc}){hint}; check the "
                              f"address, or start one with ComfyServer.launch(...)") from exc
        if "output_dir" not in options:
            options["output_dir"] = _local_output_dir(base, answer.json())
        return cls(url, **options)

    @classmethod
    def launch(cls, path: str | Path | None = None, *, port: int | None = None, args: Sequence[str] = (),
               python: str | None = None, timeout: float = 120.0, log_file: str | Path | None = None,
               env: dict[str, str] | None = None, cmd: Sequence[str] | str | None = None,
               host: str = "127.0.0.1", **options: Any) -> ComfyServer:
        """Start ``main.py`` of a ComfyUI checkout (or ``cmd``) on a free port and wait until it answers.

        ``cmd`` is a command line of your own; ``{port}``/``{host}`` in it are substituted, else ``--port P`` is
        appended. The log goes to ``log_file`` (a temp file by default); a failed start raises ServerError
        with its tail. Stop the server with ``stop()``, a ``with`` block, or at interpreter exit.
        On a CPU-only torch ComfyUI needs ``args=["--cpu"]``; add ``"--preview-method", "auto"`` for step
        previews (ComfyUI's default is none).
        """
        if any(str(a) == "--port" or str(a).startswith("--port=") for a in args):
            raise ValueError("pass the port as launch(port=...), not in args")
        if cmd is not None and port is None:
            argv0 = [cmd] if isinstance(cmd, str) else list(cmd)
            port = port_from_argv(" ".join(argv0).split())
        if port is None:
            port = free_port(host)
        elif port_in_use(host, port):
            raise ServerError(f"port {port} on {host} is already in use; pass port=None to pick a free one, "
                              f"or ComfyServer.connect('http://{host}:{port}') if that is a ComfyUI server")
        argv, cwd = build_command(path, cmd, host=host, port=port, args=args, python=python or sys.executable)
        if "output_dir" not in options:
            out = option_from_argv(argv, "--output-directory")
            if out is None and cwd is not None and option_from_argv(argv, "--base-directory") is None:
                out = str(cwd / "output")
            options["output_dir"] = Path(cwd or ".", out).resolve() if out else None
        process = ServerProcess(argv, cwd=cwd, env=env, log_file=log_file)
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
        try:
            process.wait_ready(url, timeout)
        except BaseException:
            process.stop()
            raise
        return cls(url, process=process, **options)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the WebSocket and stop following runs (a launched server keeps running; see stop())."""
        self._closed.set()
        self._socket.close()
        for run in self._router.active():
            self._fail(run, ServerError(f"the connection to {self.url} was closed while prompt "
                                        f"{run.prompt_id} was running"))

    def stop(self) -> None:
        """Close the connection and, for a launched server, terminate its process group."""
        self.close()
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> ComfyServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def log_file(self) -> Path | None:
        """The launched server's log file (None for an attached server)."""
        return self.process.log_file if self.process else None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the launched server's log."""
        from .launcher import tail

        return tail(self.log_file, lines)

    def __repr__(self) -> str:
        how = f"pid={self.process.pid}" if self.process else "attached"
        return f"ComfyServer({self.url!r}, {how})"

    # -- plain HTTP API -----------------------------------------------------------------------------------
    def _request(self, method: str, route: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.request_timeout)
        try:
            return self._http.request(method, f"{self.url}{route}", **kwargs)
        except requests.RequestException as exc:
            raise self._server_error(f"{method} {route} failed: {exc}") from exc

    def _json(self, method: str, route: str, **kwargs: Any) -> Any:
        answer = self._request(method, route, **kwargs)
        if not answer.ok:
            raise ServerError(f"{method} {route} answered {answer.status_code}: {answer.text[:500]}")
        return answer.json() if answer.content else None

    def _server_error(self, message: str) -> ServerError:
        if self.process is not None:
            return explain(message, self.process.log_file)
        return ServerError(message)

    def system_stats(self) -> dict[str, Any]:
        """``GET /system_stats``: versions, argv, devices and memory."""
        return self._json("GET", "/system_stats")

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """``GET /object_info``: every node schema, custom nodes included (a schema for ck.Workflow)."""
        return self._json("GET", f"/object_info/{node_class}" if node_class else "/object_info")

    def queue(self) -> dict[str, Any]:
        """``GET /queue``: ``{"queue_running": [...], "queue_pending": [...]}``."""
        return self._json("GET", "/queue")

    def history(self, prompt_id: str | None = None, max_items: int | None = None) -> dict[str, Any] | None:
        """``GET /history``: all items, or the item of ``prompt_id`` (None when the server has none)."""
        if prompt_id is not None:
            return history_item(self._json("GET", f"/history/{prompt_id}"), prompt_id)
        params = {"max_items": max_items} if max_items is not None else None
        return self._json("GET", "/history", params=params)

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """``POST /free``: unload models and drop node caches after the current prompt."""
        self._json("POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory})

    def interrupt(self, prompt_id: str | None = None) -> None:
        """``POST /interrupt``: stop the running prompt (only ``prompt_id`` if given and running)."""
        self._json("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> Any:  # noqa: A002
        """``GET /view``: one image of the server's output/input/temp folder as a PIL image."""
        from PIL import Image

        answer = self._request("GET", "/view", params={"filename": filename, "subfolder": subfolder,
                                                       "type": type})
        if not answer.ok:
            raise ServerError(f"GET /view of {type}/{subfolder + '/' if subfolder else ''}{filename} answered "
                              f"{answer.status_code}: {answer.text[:200]}")
        image = Image.open(io.BytesIO(answer.content))
        image.load()
        return image

    def upload_image(self, image: Any, name: str | None = None, overwrite: bool = False, subfolder: str = "",
                     type: str = "input") -> str:  # noqa: A002
        """``POST /upload/image`` a file path, bytes or PIL image; returns the value for LoadImage's ``image``."""
        if isinstance(image, (str, Path)):
            path = Path(image).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"upload_image: no file at {path}")
            data, name = path.read_bytes(), name or path.name
        elif isinstance(image, (bytes, bytearray)):
            data = bytes(image)
            name = name or f"comfykit_{hashlib.sha256(data).hexdigest()[:12]}.png"
        elif hasattr(image, "save"):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            data = buf.getvalue()
            name = name or f"comfykit_{hashlib.sha256(data).hexdigest()[:12]}.png"
        else:
            raise TypeError(f"upload_image takes a path, bytes or a PIL image, not {type(image).__name__}")
        answer = self._request("POST", "/upload/image", files={"image": (name, data)},
                               data={"overwrite": "true" if overwrite else "false", "subfolder": subfolder,
                                     "type": type})
        if not answer.ok:
            raise ServerError(f"POST /upload/image of {name!r} answered {answer.status_code}: {answer.text[:300]}")
        saved = answer.json()
        value = f"{saved['subfolder']}/{saved['name']}" if saved.get("subfolder") else saved["name"]
        return value if saved.get("type", type) == "input" else f"{value} [{saved.get('type', type)}]"

    # -- running ------------------------------------------------------------------------------------------
    def submit(self, workflow: Any, *, on_event: EventCallback | None = None, prompt_id: str | None = None,
               extra_data: dict[str, Any] | None = None, extra_pnginfo: dict[str, Any] | None = None,
               outputs: Sequence[str] | None = None, front: bool = False, fetch_images: bool = True,
               keep_previews: bool = False, **options: Any) -> Job:
        """POST the prompt with this client's id and return its Job; a 400 raises ValidationError at once.

        Step previews the server sends reach ``on_event`` and the Job's iterator; ``Result.events`` keeps them
        only with ``keep_previews=True``.
        """
        if options:
            raise TypeError(f"ComfyServer.submit() got unknown option(s): {', '.join(options)}")
        if self._closed.is_set():
            raise ServerError(f"this ComfyServer for {self.url} is closed; connect() or launch() again")
        from ..graph.prompt import to_api_prompt

        # the Workflow's own checks here (fail before a round trip); the server validates against its files
        prompt, ui = to_api_prompt(workflow, schema=self, validate=True, ui=True)
        self._ensure_listening()
        prompt_id = prompt_id or str(uuid.uuid4())
        extra = dict(extra_data or {})
        pnginfo = dict(extra_pnginfo or {})
        if ui is not None:
            pnginfo.setdefault("workflow", ui)
        if pnginfo:
            extra["extra_pnginfo"] = {**extra.get("extra_pnginfo", {}), **pnginfo}
        body: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id,
                                "extra_data": extra}
        if outputs:
            body["partial_execution_targets"] = [str(o) for o in outputs]
        if front:
            body["front"] = True
        job = Job(prompt_id, [on_event], interrupt=lambda: self._cancel(prompt_id))
        run = RunState(prompt_id, prompt, job, fetch_images=fetch_images, keep_previews=keep_previews)
        self._router.register(run)  # before the POST: the first events can beat its answer
        try:
            answer = self._request("POST", "/prompt", json=body)
            if answer.status_code == 400:
                raise ValidationError.from_response(_json_or_text(answer))
            if not answer.ok:
                raise ServerError(f"POST /prompt answered {answer.status_code}: {answer.text[:500]}")
        except BaseException:
            self._router.unregister(prompt_id)
            raise
        reply = answer.json()
        if reply.get("prompt_id") and reply["prompt_id"] != prompt_id:  # a server that chose its own id
            self._router.unregister(prompt_id)
            prompt_id = job.prompt_id = run.prompt_id = reply["prompt_id"]
            self._router.register(run)
        if reply.get("node_errors"):
            log.warning("prompt %s runs without the outputs that failed validation:\n%s", prompt_id,
                        ValidationError.from_response({"error": {"message": "partial prompt"},
                                                       "node_errors": reply["node_errors"]}))
        return job

    def run(self, workflow: Any, *, on_event: EventCallback | None = None, timeout: float | None = None,
            **options: Any) -> Result:
        """Run to the end and return the Result (raises its error); Ctrl-C also interrupts it on the server."""
        job = self.submit(workflow, on_event=on_event, **options)
        try:
            return job.result(timeout)
        except KeyboardInterrupt:  # a notebook's stop button must not leave the server busy for minutes
            try:
                job.interrupt()
            except Exception:  # noqa: BLE001 - the user asked to stop; a dead server must not mask that
                log.debug("interrupting %s after Ctrl-C failed", job.prompt_id, exc_info=True)
            raise

    async def arun(self, workflow: Any, **options: Any) -> Result:
        """``await srv.arun(wf)``: run() in a worker thread so the event loop stays free."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.run, workflow, **options))

    def _cancel(self, prompt_id: str) -> None:
        run = self._router.runs.get(prompt_id)
        if run is not None:
            run.cancelled = True
        pending = {entry[1] for entry in self.queue().get("queue_pending", [])}
        # a pending prompt is deleted from the queue, a running one interrupted; the interrupt names the
        # prompt, so it is harmless if the prompt started in between (and stops it then)
        self._json("POST", "/queue", json={"delete": [prompt_id]})
        self._json("POST", "/interrupt", json={"prompt_id": prompt_id})
        if run is not None and prompt_id in pending:
            self._end_cancelled(run)  # it will never run: no event will end it

    # -- following runs -----------------------------------------------------------------------------------
    def _ensure_listening(self) -> None:
        with self._lock:
            if self._socket.connected.is_set() and self._monitor is not None:
                return
            try:
                self._socket.start()
            except Exception as exc:
                raise self._server_error(f"cannot open the WebSocket {self._socket.ws_url}: {exc}") from exc
            if self._monitor is None or not self._monitor.is_alive():
                self._monitor = threading.Thread(target=self._watch, name=f"comfykit-watch-{self.client_id[:8]}",
                                                 daemon=True)
                self._monitor.start()

    def _on_done(self, run: RunState) -> None:
        # collecting images is HTTP work: keep it off the socket's reader thread
        threading.Thread(target=self._collect, args=(run, None), daemon=True,
                         name=f"comfykit-collect-{run.prompt_id[:8]}").start()

    def _on_reconnect(self) -> None:
        for run in self._router.active():
            run.last_seen = 0.0  # events may be lost: check /history on the next heartbeat

    def _collect(self, run: RunState, item: dict[str, Any] | None) -> None:
        try:
            if item is None:
                item = self._history_when_written(run)
            result, error = build_result(self, run, item)
        except Exception as exc:
            result, error = None, exc if isinstance(exc, ServerError) else ServerError(
                f"collecting the result of prompt {run.prompt_id} failed: {exc}")
        self._router.unregister(run.prompt_id)
        run.job.finish(result, error)

    def _history_when_written(self, run: RunState) -> dict[str, Any] | None:
        for _ in range(10):
            try:
                item = self.history(run.prompt_id)
            except ServerError:
                break
            if item is not None:
                return item
            time.sleep(0.1)
        return None  # no history (an old or minimal server): the events are all we have

    def _fail(self, run: RunState, error: Exception) -> None:
        if not run.claim():
            return
        self._router.unregister(run.prompt_id)
        run.job.finish(None, error)

    def _end_cancelled(self, run: RunState) -> None:
        if not run.claim():
            return
        self._router.unregister(run.prompt_id)
        data = {"prompt_id": run.prompt_id, "node_id": None, "node_type": None, "executed": [],
                "timestamp": int(time.time() * 1000)}
        run.emit(Event(EXECUTION_INTERRUPTED, data))
        error = InterruptedError(data)
        run.job.finish(Result(prompt_id=run.prompt_id, prompt=run.prompt, status="interrupted",
                              events=list(run.events), error=error), error)

    def _watch(self) -> None:
        """Heartbeat: notice a dead process, an unreachable server, or a run whose end the socket missed."""
        while not self._closed.wait(0.5):
            runs = [r for r in self._router.active() if not r.finishing]
            if not runs:
                self._unreachable_since = None
                continue
            if self.process is not None and not self.process.alive():
                error = explain(f"the server process {self.process.pid} exited with code "
                                f"{self.process.returncode} while prompt(s) were running", self.process.log_file)
                for run in runs:
                    self._fail(run, error)
                continue
            now = time.monotonic()
            quiet = not self._socket.connected.is_set()
            due = [r for r in runs if quiet or now - r.last_seen > (1.0 if r.terminal else self.heartbeat)]
            for run in due:
                self._check(run, now)

    def _check(self, run: RunState, now: float) -> None:
        try:
            item = history_item(self._json("GET", f"/history/{run.prompt_id}", timeout=min(5.0, self.request_timeout)),
                                run.prompt_id)
        except ServerError as exc:
            self._unreachable_since = self._unreachable_since or now
            if now - self._unreachable_since > self.dead_after:
                self._fail(run, self._server_error(f"the server at {self.url} stopped answering for "
                                                   f"{self.dead_after:g}s while prompt {run.prompt_id} ran: {exc}"))
            return
        self._unreachable_since = None
        run.last_seen = now
        if item is not None:  # history is written once the prompt is over
            if run.claim():
                self._router.flush()
                threading.Thread(target=self._collect, args=(run, item), daemon=True).start()
            return
        try:
            queued = self.queue()
        except ServerError:
            return  # the next heartbeat decides whether the server is gone
        ids = {entry[1] for key in ("queue_running", "queue_pending") for entry in queued.get(key, [])}
        run.checks_missing = 0 if run.prompt_id in ids else run.checks_missing + 1
        if run.checks_missing >= 2:
            if run.cancelled:  # deleted while pending: it never ran, end it as Engine ends such a job
                self._end_cancelled(run)
            else:
                self._fail(run, self._server_error(f"prompt {run.prompt_id} is neither queued, running nor in "
                                                   f"the history of {self.url} (server restarted or queue "
                                                   f"cleared?)"))


def _local_output_dir(url: str, stats: dict[str, Any]) -> Path | None:
    """Where a server on this machine saves outputs, when its argv says so unambiguously (else None)."""
    from urllib.parse import urlparse

    if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    argv = [str(a) for a in (stats.get("system") or {}).get("argv") or []]
    out = option_from_argv(argv, "--output-directory")
    if out is not None:
        return Path(out) if Path(out).is_absolute() else None
    if argv and Path(argv[0]).is_absolute() and Path(argv[0]).name == "main.py" \
            and option_from_argv(argv, "--base-directory") is None:
        return Path(argv[0]).parent / "output"  # ComfyUI's default: output/ beside main.py
    return None


def _json_or_text(answer: requests.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        body = {"error": answer.text}
    return body if isinstance(body, dict) else {"error": str(body)}
