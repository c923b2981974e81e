"""The aiohttp application: ComfyUI's HTTP routes (bare and under /api) over an embedded Engine."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from ..errors import ValidationError
from ..graph.limits import Limits, check_limits
from . import files
from .guard import origin_only_middleware, security_headers
from .hub import Hub
from .protocol import check_engine, engine_dirs, list_files
from .queue import PromptQueue
from .worker import Worker

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

#: GET /models answers ComfyUI 0.3.64's folder keys.
MODEL_FOLDERS = ["checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
                 "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers", "model_patches",
                 "audio_encoders"]

STATE = web.AppKey("comfykit_state", object)


class ServerState:
    """Everything one running server owns: engine, queue, sockets, worker and settings."""

    def __init__(self, engine: Any, dirs: dict[str, str], *, max_upload_size: int, preview_size: int,
                 max_history: int, body_timeout: float = 120.0, max_history_mb: float = 256,
                 max_extra_data_mb: float = 10, limits: Limits | None = None):
        self.engine = engine
        self.limits = limits
        self.body_timeout = body_timeout
        self.max_extra_data = int(max_extra_data_mb * 1024 * 1024)
        self.dirs = dirs
        self.max_upload_size = max_upload_size
        self.preview_size = preview_size
        self.number = 0
        self.queue = PromptQueue(max_history, on_change=self._status_changed,
                                 max_bytes=int(max_history_mb * 1024 * 1024))
        self.hub: Hub | None = None
        self.worker: Worker | None = None
        self.auth: Any = None  # set by comfykit.share: an object with .check(request) -> bool
        self._waiters: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}

    @property
    def features(self) -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": self.max_upload_size}

    def _status_changed(self, remaining: int) -> None:
        if self.hub is not None:
            self.hub.send("status", {"status": {"exec_info": {"queue_remaining": remaining}}})

    # -- waiting for a prompt from a handler (used by /generate) ----------------------------------------
    def waiter(self, prompt_id: str) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiters[prompt_id] = (loop, fut)
        return fut

    def _done(self, prompt_id: str, history: dict[str, Any]) -> None:
        entry = self._waiters.pop(prompt_id, None)
        if entry is not None:
            loop, fut = entry
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(history))

    def enqueue(self, prompt: Any, *, prompt_id: str | None = None, extra_data: dict[str, Any] | None = None,
                number: float | None = None, partial_targets: list[str] | None = None) -> dict[str, Any]:
        """Validate and queue a prompt as POST /prompt does; raises ValidationError."""
        if number is None:
            number = self.number
            self.number += 1
        prompt_id = str(prompt_id) if prompt_id is not None else str(uuid.uuid4())
        if not isinstance(prompt, dict):
            raise _invalid("Prompt must be a JSON object", f"got {type(prompt).__name__}",
                           "the prompt must be a JSON object {node_id: {class_type, inputs}}")
        if self.queue.known(prompt_id):
            raise _invalid("prompt_id is already in use", f"prompt_id {prompt_id[:100]!r}",
                           "each prompt needs its own prompt_id; leave it out to get a fresh one")
        extra_data = dict(extra_data or {})
        extra_size = _json_size(extra_data)
        if extra_size is None:
            raise _invalid("extra_data must be plain JSON", "it holds NaN or Infinity",
                           "extra_data must not contain NaN or Infinity")
        if extra_size > self.max_extra_data:
            raise _invalid("extra_data is too large", f"{extra_size} bytes, at most {self.max_extra_data}",
                           "send a smaller extra_data (it is kept in the queue and the history)")
        check_limits(prompt, self.limits)  # before validation: it is linear and refuses the huge prompts
        valid = self.engine.validate(prompt, partial_targets)
        if _json_size(valid.prompt) is None:  # a non-finite number in an input the schema does not know
            raise _invalid("Prompt must be plain JSON", "it holds NaN or Infinity",
                           "the prompt must not contain NaN or Infinity")
        item = [number, prompt_id, valid.prompt, extra_data, list(valid.outputs)]
        # Queue it right after this handler's response is written: once the worker wakes it holds the GIL for
        # milliseconds at a time, and the answer would wait for it. Later requests still see the item, since
        # this callback runs before the loop reads another request.
        asyncio.get_running_loop().call_soon(self.queue.put, item)
        return {"prompt_id": prompt_id, "number": number, "node_errors": valid.node_errors}


def _invalid(message: str, details: str, hint: str) -> ValidationError:
    """A ValidationError with ComfyUI's ``invalid_prompt`` body for a request the engine never sees."""
    return ValidationError(f"{message} ({details}); {hint}",
                           {"type": "invalid_prompt", "message": message, "details": details, "extra_info": {}})


def _json_size(value: Any) -> int | None:
    """Bytes of ``value`` as strict JSON, or None when it holds NaN or Infinity (which JSON has no words for)."""
    try:
        return len(json.dumps(value, allow_nan=False, separators=(",", ":")))
    except ValueError:
        return None


def _cors_middleware(allowed_origin: str) -> Any:
    @web.middleware
    async def cors(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response()
        else:
            response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = allowed_origin
        response.headers["Access-Control-Allow-Methods"] = "POST, GET, DELETE, PUT, OPTIONS, PATCH"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
        response.headers["Access-Control-Allow-Credentials"] = "true"
        return response

    return cors


@web.middleware
async def _auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    auth = request.app[STATE].auth
    if auth is not None:
        refusal = auth.check(request)
        if refusal is not None:
            return refusal
    response = await handler(request)
    if auth is not None:
        auth.after(request, response)
    return response


def _bad_request(message: str, status: int = 400) -> web.HTTPException:
    cls = web.HTTPRequestTimeout if status == 408 else web.HTTPBadRequest
    return cls(text=json.dumps({"error": message}), content_type="application/json")


async def read_body(request: web.Request, timeout: float) -> bytes:
    """The whole request body, or 408 when it does not arrive within ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except asyncio.TimeoutError:
        raise _bad_request(f"the request body did not arrive within {timeout:g} s", 408) from None


async def _json_body(request: web.Request, timeout: float, *, what: str = "") -> Any:
    """The JSON body (``{}`` when there is none); with ``what``, refuse anything but a JSON object."""
    if not request.can_read_body:
        return {}
    raw = await read_body(request, timeout)
    try:
        body = json.loads(raw.decode(request.charset or "utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise _bad_request("the request body must be JSON") from None
    except RecursionError:  # json nests by recursion; 100k '[' would otherwise end in a 500
        raise _bad_request("the request body nests too deeply") from None
    if what and not isinstance(body, dict):
        raise _bad_request(f"{what} takes a JSON object like {{\"clear\": true}}, got {type(body).__name__}")
    return body


def _optional_str(value: Any, what: str, *, numbers: bool = False) -> Any:
    """``value`` when it is None or a string (or a number, with ``numbers``); else an invalid_prompt error."""
    if value is None or isinstance(value, str) or (numbers and isinstance(value, (int, float))
                                                   and not isinstance(value, bool)):
        return value
    raise _invalid(f"{what} must be a string", f"got {type(value).__name__}",
                   f"send {what} as a string or leave it out")


def _id_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise _bad_request(f"{what}: 'delete' must be a list of prompt ids, got {json.dumps(value)[:80]}")
    return [str(v) for v in value]


def _routes(state: ServerState) -> web.RouteTableDef:
    routes = web.RouteTableDef()
    engine = state.engine

    @routes.get("/prompt")
    async def get_prompt(request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": state.queue.queue_remaining()}})

    @routes.post("/prompt")
    async def post_prompt(request: web.Request) -> web.Response:
        body = await _json_body(request, state.body_timeout)
        if not isinstance(body, dict):
            body = {}
        if "number" in body:
            try:
                number = float(body["number"])
                if not math.isfinite(number):
                    raise ValueError
            except (TypeError, ValueError):
                return web.json_response({"error": f"number must be a finite number, got "
                                                   f"{json.dumps(body['number'])[:80]}"}, status=400)
        else:  # ComfyUI counts every POST without a number, valid or not
            number = -state.number if body.get("front") else state.number
            state.number += 1
        if "prompt" not in body:
            message = "No prompt provided"
            return web.json_response({"error": {"type": "no_prompt", "message": message, "details": message,
                                                "extra_info": {}}, "node_errors": {}}, status=400)
        extra_data = body.get("extra_data") or {}
        if not isinstance(extra_data, dict):
            extra_data = {}
        try:
            if "client_id" in body:
                extra_data["client_id"] = _optional_str(body["client_id"], "client_id")
            if "client_id" in extra_data:
                _optional_str(extra_data["client_id"], "extra_data.client_id")
            prompt_id = _optional_str(body.get("prompt_id"), "prompt_id", numbers=True)
            targets = body.get("partial_execution_targets")
            if targets is not None and (not isinstance(targets, list)
                                        or not all(isinstance(t, str) for t in targets)):
                raise _invalid("partial_execution_targets must be a list of node ids",
                               f"got {json.dumps(targets)[:80]}", 'send e.g. ["9"] or leave it out')
            answer = state.enqueue(body["prompt"], prompt_id=prompt_id, extra_data=extra_data, number=number,
                                   partial_targets=targets)
        except ValidationError as exc:
            return web.json_response(exc.to_dict(), status=400)
        return web.json_response(answer)

    @routes.get("/queue")
    async def get_queue(request: web.Request) -> web.Response:
        running, pending = state.queue.current_queue()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    @routes.post("/queue")
    async def post_queue(request: web.Request) -> web.Response:
        body = await _json_body(request, state.body_timeout, what="POST /queue")
        if body.get("clear"):
            state.queue.wipe()
        if "delete" in body:
            state.queue.delete(_id_list(body["delete"], "POST /queue"))
        return web.Response(status=200)

    @routes.get("/history")
    async def get_history(request: web.Request) -> web.Response:
        try:
            max_items = int(request.query["max_items"]) if "max_items" in request.query else None
            offset = int(request.query.get("offset", -1))
        except ValueError:
            return web.json_response({"error": "max_items and offset must be integers"}, status=400)
        return web.json_response(state.queue.get_history(max_items=max_items, offset=offset))

    @routes.get("/history/{prompt_id}")
    async def get_history_item(request: web.Request) -> web.Response:
        return web.json_response(state.queue.get_history(request.match_info["prompt_id"]))

    @routes.post("/history")
    async def post_history(request: web.Request) -> web.Response:
        body = await _json_body(request, state.body_timeout, what="POST /history")
        if body.get("clear"):
            state.queue.wipe_history()
        if "delete" in body:
            state.queue.delete_history(_id_list(body["delete"], "POST /history"))
        return web.Response(status=200)

    @routes.post("/interrupt")
    async def interrupt(request: web.Request) -> web.Response:
        body = await _json_body(request, state.body_timeout)
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if prompt_id is None or prompt_id in state.queue.running_ids():
            engine.interrupt()
        return web.Response(status=200)

    @routes.post("/free")
    async def free(request: web.Request) -> web.Response:
        body = await _json_body(request, state.body_timeout, what="POST /free")
        free_memory = bool(body.get("free_memory", False))
        unload = bool(body.get("unload_models", free_memory))
        if state.worker is not None and (unload or free_memory):
            state.worker.request_free(unload, free_memory)
        return web.Response(status=200)

    @routes.get("/view")
    async def view(request: web.Request) -> web.StreamResponse:
        return await files.view(request, state.dirs)

    @routes.post("/upload/image")
    async def upload(request: web.Request) -> web.Response:
        return await files.upload_image(request, state.dirs, state.body_timeout)

    @routes.get("/object_info")
    async def object_info(request: web.Request) -> web.Response:
        return web.json_response(engine.object_info())

    @routes.get("/object_info/{node_class}")
    async def object_info_one(request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        info = engine.object_info()
        return web.json_response({name: info[name]} if name in info else {})

    @routes.get("/system_stats")
    async def system_stats(request: web.Request) -> web.Response:
        return web.json_response(engine.system_stats())

    @routes.get("/features")
    async def features(request: web.Request) -> web.Response:
        return web.json_response(state.features)

    @routes.get("/embeddings")
    async def embeddings(request: web.Request) -> web.Response:
        return web.json_response([os.path.splitext(f)[0] for f in list_files(engine, "embeddings")])

    @routes.get("/models")
    async def models(request: web.Request) -> web.Response:
        return web.json_response(MODEL_FOLDERS)

    @routes.get("/models/{folder}")
    async def models_in(request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.json_response({"error": f"unknown model folder {folder!r}; see GET /models"}, status=404)
        return web.json_response(sorted(list_files(engine, folder)))

    @routes.get("/ws")
    async def websocket(request: web.Request) -> web.StreamResponse:
        assert state.hub is not None
        return await state.hub.handle(request)

    return routes


def create_app(engine: Any, *, output_dir: str | os.PathLike[str] | None = None,
               input_dir: str | os.PathLike[str] | None = None, temp_dir: str | os.PathLike[str] | None = None,
               max_upload_size_mb: float = 100, enable_cors: str | None = None, preview_size: int = 512,
               max_history: int = 10000, header_timeout: float = 30.0, body_timeout: float = 120.0,
               max_history_mb: float = 256, max_extra_data_mb: float = 10,
               limits: Limits | None | str = "default") -> web.Application:
    """The aiohttp app serving ``engine`` with ComfyUI's routes; folders default to the engine's own.

    ``enable_cors``: an origin (``"*"`` for any) to allow cross-origin requests, as ``--enable-cors-header``;
    None keeps ComfyUI's default of refusing cross-origin requests to a loopback server.
    ``limits``: a :class:`comfykit.graph.limits.Limits` for every prompt ("default": ``Limits.server_defaults()``,
    None: no limits). ``max_history_mb`` bounds the history's JSON size besides its ``max_history`` items; ``max_extra_data_mb``
    the ``extra_data`` of one prompt. ``header_timeout``: seconds a connection may take to send a request's headers (and may stay idle between
    requests); ``body_timeout``: seconds a request body may take to arrive (408 after that).
    """
    from .generate import PAGE_ASSETS, add_page_routes

    dirs = engine_dirs(check_engine(engine))
    for kind, value in (("output", output_dir), ("input", input_dir), ("temp", temp_dir)):
        if value is not None:
            dirs[kind] = str(value)
    for path in dirs.values():
        os.makedirs(path, exist_ok=True)
    max_upload = int(max_upload_size_mb * 1024 * 1024)
    state = ServerState(engine, dirs, max_upload_size=max_upload, preview_size=preview_size,
                        max_history=max_history, body_timeout=body_timeout, max_history_mb=max_history_mb,
                        max_extra_data_mb=max_extra_data_mb,
                        limits=Limits.server_defaults() if limits == "default" else limits)
    middlewares = [_cors_middleware(enable_cors) if enable_cors else origin_only_middleware(), _auth_middleware]
    # aiohttp starts its keep-alive timer when a connection opens, so it also bounds the wait for headers.
    app = web.Application(client_max_size=max_upload, middlewares=middlewares,
                          handler_args={"keepalive_timeout": header_timeout})
    app[STATE] = state
    routes = _routes(state)
    add_page_routes(routes, state)
    page_paths = {"/"} | {"/" + name for name in PAGE_ASSETS}
    for route in routes:
        assert isinstance(route, web.RouteDef)
        app.router.add_route(route.method, route.path, route.handler)
        if route.path not in page_paths:
            app.router.add_route(route.method, "/api" + route.path, route.handler)

    async def start(app: web.Application) -> None:
        state.hub = Hub(asyncio.get_running_loop(), state.features, state.queue.queue_remaining,
                        lambda sid: state.worker.executing_for(sid) if state.worker else None)
        state.worker = Worker(engine, state.queue, state.hub, preview_size=preview_size, on_done=state._done)
        state.worker.start()

    async def stop(app: web.Application) -> None:
        if state.worker is not None:
            await asyncio.get_running_loop().run_in_executor(None, state.worker.stop)
        if state.hub is not None:
            await state.hub.close_all()

    app.on_response_prepare.append(security_headers)
    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app
