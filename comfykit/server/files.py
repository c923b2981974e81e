"""GET /view and POST /upload/image: serving and receiving files without ever leaving their folders."""

from __future__ import annotations

import hashlib
import io
import mimetypes
import os
from typing import Any

from aiohttp import web

_ANNOTATIONS = (" [output]", " [input]", " [temp]")


def _bad(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _inside(base: str, path: str) -> bool:
    """True when ``path`` (absolute) is ``base`` itself or below it."""
    try:
        return os.path.commonpath((base, path)) == base
    except ValueError:  # different drives on Windows
        return False


def view(request: web.Request, dirs: dict[str, str]) -> web.StreamResponse:
    """ComfyUI's ``/view``: type, subfolder, preview (``webp;90``/``jpeg;80``) and channel (rgba, rgb, a)."""
    query = request.query
    filename = query.get("filename", "")
    folder = None
    for annotation in _ANNOTATIONS:  # "name.png [input]" picks the folder, as ComfyUI's annotated paths do
        if filename.endswith(annotation):
            filename, folder = filename[: -len(annotation)], dirs[annotation[2:-1]]
            break
    if not filename or filename[0] in "/\\" or ".." in filename:
        return _bad(400, "filename is required and must not be absolute or contain '..'")
    if folder is None:
        kind = query.get("type", "output")
        if kind not in dirs:
            return _bad(400, f"type must be one of {sorted(dirs)}, got {kind!r}")
        folder = dirs[kind]
    base = os.path.abspath(folder)
    if "subfolder" in query:
        full = os.path.abspath(os.path.join(base, query["subfolder"]))
        if not _inside(base, full):
            return _bad(403, "subfolder must stay inside its folder")
        base = full
    path = os.path.join(base, os.path.basename(filename))
    if not os.path.isfile(path):
        return _bad(404, f"no such file: {filename}")
    name = os.path.basename(path)
    headers = {"Content-Disposition": f'filename="{name}"'}
    channel = query.get("channel", "rgba")
    if "preview" in query or channel in ("rgb", "a"):
        body, content_type = _transcode(path, query.get("preview"), channel)
        return web.Response(body=body, content_type=content_type, headers=headers)
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if content_type in ("text/html", "text/javascript", "application/javascript", "text/css"):
        content_type = "application/octet-stream"  # never let /view serve active content
    headers["Content-Type"] = content_type
    return web.FileResponse(path, headers=headers)


def _transcode(path: str, preview: str | None, channel: str) -> tuple[bytes, str]:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        buf = io.BytesIO()
        if preview is not None:
            parts = preview.split(";")
            fmt = parts[0] if parts[0] in ("webp", "jpeg") else "webp"
            if "a" in channel:
                fmt = "webp"
            quality = int(parts[-1]) if parts[-1].isdigit() else 90
            if fmt == "jpeg" or channel == "rgb":
                img = img.convert("RGB")
            img.save(buf, format=fmt.upper(), quality=quality)
            return buf.getvalue(), f"image/{fmt}"
        if channel == "rgb":
            img.convert("RGB").save(buf, format="PNG")
        else:  # "a": black RGB carrying the source alpha (opaque when there is none)
            alpha = img.getchannel("A") if "A" in img.getbands() else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size, (0, 0, 0, 255))
            out.putalpha(alpha)
            out.save(buf, format="PNG")
        return buf.getvalue(), "image/png"


def _sha256(data: bytes | None = None, path: str | None = None) -> str:
    digest = hashlib.sha256()
    if data is not None:
        digest.update(data)
    else:
        with open(path, "rb") as fh:  # type: ignore[arg-type]
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


async def upload_image(request: web.Request, dirs: dict[str, str]) -> web.Response:
    """ComfyUI's ``/upload/image``: a name clash gets ``name (1).ext`` unless the bytes are identical."""
    post = await request.post()  # aiohttp answers 413 itself above client_max_size
    image: Any = post.get("image")
    if image is None or not hasattr(image, "file"):
        return _bad(400, "send the file as multipart field 'image'")
    filename = image.filename or ""
    if not filename:
        return _bad(400, "the uploaded file needs a filename")
    kind = str(post.get("type") or "input")
    if kind not in dirs:
        return _bad(400, f"type must be one of {sorted(dirs)}, got {kind!r}")
    overwrite = str(post.get("overwrite", "")).lower() in ("true", "1")
    subfolder = str(post.get("subfolder", ""))
    upload_dir = os.path.abspath(dirs[kind])
    folder = os.path.join(upload_dir, os.path.normpath(subfolder))
    path = os.path.abspath(os.path.join(folder, filename))
    if not _inside(upload_dir, path) or os.path.isabs(subfolder):
        return _bad(400, "subfolder and filename must stay inside the upload folder")
    folder = os.path.dirname(path)
    filename = os.path.basename(path)
    data = image.file.read()
    stem, ext = os.path.splitext(filename)
    digest = None
    duplicate = False
    i = 1
    while os.path.exists(path) and not overwrite:
        digest = digest or _sha256(data)
        if os.path.isfile(path) and _sha256(path=path) == digest:
            duplicate = True  # the same bytes are already there: hand back that name, write nothing
            break
        filename = f"{stem} ({i}){ext}"
        path = os.path.join(folder, filename)
        i += 1
    if not duplicate:
        os.makedirs(folder, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})
