"""Routes for people: ``GET /`` (a small page) and ``POST /generate`` (text in, PNG out)."""

from __future__ import annotations

import inspect
import os
import re
import uuid
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ..errors import ValidationError

_CHECKPOINT_KEYS = ("ckpt_name", "checkpoint", "ckpt")


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _fill(name: str, options: dict[str, Any], checkpoints: list[str]) -> dict[str, Any]:
    """The API prompt of template ``name`` filled with ``options`` (the first checkpoint when none is given)."""
    from .. import templates

    params = inspect.signature(templates.fill).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not any(key in options for key in _CHECKPOINT_KEYS):
        if not checkpoints:
            raise ValueError("no checkpoint found: put a .safetensors file into the models/checkpoints folder "
                             "or pass \"ckpt_name\"")
        key = next((k for k in _CHECKPOINT_KEYS if k in params), "ckpt_name" if takes_any else None)
        if key is not None:
            options[key] = checkpoints[0]
    unknown = [k for k in options if k in ("name", "schema") or (k not in params and not takes_any)]
    if unknown:
        accepted = [k for k in params if k not in ("name", "schema")]
        raise ValueError(f"unknown option(s) {unknown} for workflow {name!r}; accepted: {accepted}")
    wf = templates.fill(name, **options)
    return wf.to_api() if hasattr(wf, "to_api") else wf


def _first_image(outputs: dict[str, Any]) -> dict[str, Any] | None:
    for ui in outputs.values():
        for image in (ui or {}).get("images", []) or []:
            if isinstance(image, dict) and "filename" in image:
                return image
    return None


#: Files of the page served next to ``/`` (not under ``/api``).
PAGE_ASSETS = ("page.js", "page.css", "favicon.ico")

_HOST_CHARS = re.compile(r"[A-Za-z0-9.:\[\]-]+")


def page_csp(request: web.Request) -> str:
    """The page's Content-Security-Policy: its own script, style and images, and sockets to this host only."""
    host = request.host
    sockets = f" ws://{host} wss://{host}" if _HOST_CHARS.fullmatch(host or "") else ""
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            f"connect-src 'self'{sockets}; object-src 'none'; base-uri 'none'; form-action 'self'")


def _asset_handler(path: Any) -> Any:
    async def asset(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    return asset


def add_page_routes(routes: web.RouteTableDef, state: Any) -> None:
    """Add ``GET /`` and ``POST /generate`` to ``routes`` for the server ``state``."""
    from .app import STATIC, list_files

    @routes.get("/")
    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache",
                                                                "Content-Security-Policy": page_csp(request)})

    for name in PAGE_ASSETS:
        routes.get("/" + name)(_asset_handler(STATIC / name))

    @routes.post("/generate")
    async def generate(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 'send JSON like {"prompt": "a cat", "seed": 1, "steps": 20}')
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            return _error(400, '"prompt" must be a non-empty string, e.g. {"prompt": "a cat"}')
        options = dict(body)
        name = str(options.pop("workflow", "sd15_txt2img"))
        client_id = options.pop("client_id", None)
        try:
            api = _fill(name, options, sorted(list_files(state.engine, "checkpoints")))
        except ValidationError as exc:
            return web.json_response({"error": str(exc), "validation": exc.to_dict()}, status=400)
        except (LookupError, ValueError, TypeError, OSError) as exc:
            why = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() adds quotes
            return _error(400, f"could not fill workflow {name!r}: {why}")
        prompt_id = str(uuid.uuid4())
        waiter = state.waiter(prompt_id)
        extra = {"client_id": client_id} if client_id else {}
        try:
            state.enqueue(api, prompt_id=prompt_id, extra_data=extra)
        except ValidationError as exc:
            state._waiters.pop(prompt_id, None)
            return web.json_response({"error": str(exc), "validation": exc.to_dict()}, status=400)
        history = await waiter
        headers = {"X-Prompt-Id": prompt_id}
        if not history["status"]["completed"]:
            last = history["status"]["messages"][-1] if history["status"]["messages"] else ["?", {}]
            if last[0] == "execution_interrupted":
                return _error(409, "generation was interrupted", prompt_id=prompt_id)
            data = last[1]
            return _error(500, f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                               f"{data.get('exception_type')}: {data.get('exception_message')}",
                          prompt_id=prompt_id)
        image = _first_image(history["outputs"])
        if image is None:
            return _error(500, f"workflow {name!r} produced no image", prompt_id=prompt_id)
        kind = image.get("type", "output")
        path = os.path.join(state.dirs[kind], image.get("subfolder", ""), image["filename"])
        with open(path, "rb") as fh:
            data = fh.read()
        query = urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": kind})
        headers["X-Comfykit-View"] = f"/view?{query}"
        return web.Response(body=data, content_type="image/png", headers=headers)
