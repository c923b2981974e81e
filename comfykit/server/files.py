"""GET /view and POST /upload/image: serving and receiving files without ever leaving their folders."""

from __future__ import annotations

import asyncio
import hashlib
import io
import mimetypes
import os
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

_ANNOTATIONS = (" [output]", " [input]", " [temp]")

#: Types /view serves inline; anything else (SVG, XHTML, XML, HTML, PDF, ...) goes out as an attachment.
INLINE_TYPES = frozenset({
    "image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/x-ms-bmp", "image/avif",
    "image/apng", "image/tiff", "video/mp4", "video/webm", "video/ogg", "video/quicktime", "audio/mpeg",
    "audio/wav", "audio/x-wav", "audio/ogg", "audio/flac", "audio/x-flac", "audio/webm", "audio/mp4",
    "audio/aac",
})

#: Most pixels /view decodes for a preview or channel: 1 << 25 is 8192x4096 (about 130 MB as RGBA).
MAX_DECODE_PIXELS = 1 << 25

#: Longest file name most file systems take, in bytes.
MAX_NAME_BYTES = 255


def _bad(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _inside(base: str, path: str) -> bool:
    """True when ``path`` (absolute) is ``base`` itself or below it."""
    try:
        return os.path.commonpath((base, path)) == base
    except ValueError:  # different drives on Windows
        return False


def resolve_inside(root: str, path: str) -> str | None:
    """``path`` with every symlink resolved, or None when that leaves ``root`` (also resolved)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real if _inside(real_root, real) else None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a file name in an upload folder, or None when it can."""
    if not name or not name.strip():
        return "the uploaded file needs a filename"
    if "\0" in name:
        return "the filename must not contain NUL characters"
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if name.endswith(("/", "\\")) or base in ("", ".", ".."):
        return f"the filename {name[:80]!r} names a folder, not a file"
    if len(base.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"the filename is {len(base.encode('utf-8', 'surrogatepass'))} bytes long; at most " \
               f"{MAX_NAME_BYTES} are allowed"
    return None


def _disposition(name: str, attachment: bool) -> str:
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'{"attachment; " if attachment else ""}filename="{quoted}"'


async def view(request: web.Request, dirs: dict[str, str]) -> web.StreamResponse:
    """ComfyUI's ``/view``: type, subfolder, preview (``webp;90``/``jpeg;80``) and channel (rgba, rgb, a)."""
    query = request.query
    filename = query.get("filename", "")
    folder = None
    for annotation in _ANNOTATIONS:  # "name.png [input]" picks the folder, as ComfyUI's annotated paths do
        if filename.endswith(annotation):
            filename, folder = filename[: -len(annotation)], dirs[annotation[2:-1]]
            break
    if not filename or filename[0] in "/\\" or ".." in filename or "\0" in filename:
        return _bad(400, "filename is required and must not be absolute or contain '..'")
    if folder is None:
        kind = query.get("type", "output")
        if kind not in dirs:
            return _bad(400, f"type must be one of {sorted(dirs)}, got {kind!r}")
        folder = dirs[kind]
    root = os.path.abspath(folder)
    base = root
    if "subfolder" in query:
        if "\0" in query["subfolder"]:
            return _bad(400, "subfolder must not contain NUL characters")
        full = os.path.abspath(os.path.join(base, query["subfolder"]))
        if not _inside(base, full):
            return _bad(403, "subfolder must stay inside its folder")
        base = full
    path = os.path.join(base, os.path.basename(filename))
    real = resolve_inside(root, path)
    if real is None:  # a symlink somewhere on the way points out of the folder
        return _bad(403, "the file is a link that leaves its folder")
    if not os.path.isfile(real):
        return _bad(404, f"no such file: {filename}")
    name = os.path.basename(path)
    channel = query.get("channel", "rgba")
    if "preview" in query or channel in ("rgb", "a"):
        options = _preview_options(query.get("preview"), channel)
        if isinstance(options, str):
            return _bad(400, options)
        loop = asyncio.get_running_loop()
        try:  # decoding and encoding take long enough on big images to stall every other request
            body, content_type = await loop.run_in_executor(None, _transcode, real, *options)
        except _PreviewError as exc:
            return _bad(400, str(exc))
        headers = {"Content-Disposition": _disposition(name, False)}
        return web.Response(body=body, content_type=content_type, headers=headers)
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    inline = content_type in INLINE_TYPES
    headers = {"Content-Disposition": _disposition(name, not inline),
               "Content-Type": content_type if inline else "application/octet-stream"}
    return web.FileResponse(real, headers=headers)


class _PreviewError(ValueError):
    """A file /view cannot turn into a preview: not an image, or too many pixels."""


def _preview_options(preview: str | None, channel: str) -> tuple[str | None, int, str] | str:
    """(format or None, quality, channel) for ``_transcode``, or the reason the query is refused."""
    if preview is None:
        return None, 90, channel
    parts = preview.split(";")
    fmt = parts[0] if parts[0] in ("webp", "jpeg") else "webp"
    if "a" in channel:
        fmt = "webp"
    quality = 90
    if parts[-1].isdigit():
        quality = int(parts[-1])
        if not 1 <= quality <= 100:
            return f"preview quality must be between 1 and 100, got {parts[-1][:20]}"
    return fmt, quality, channel


def _transcode(path: str, fmt: str | None, quality: int, channel: str) -> tuple[bytes, str]:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise _PreviewError(f"cannot preview {os.path.basename(path)!r}: {exc}") from None
    with img:
        width, height = img.size
        if width * height > MAX_DECODE_PIXELS:  # checked before decoding a single pixel
            raise _PreviewError(f"{os.path.basename(path)!r} is {width}x{height} pixels, more than the "
                                f"{MAX_DECODE_PIXELS} a preview decodes; fetch it without preview= or channel=")
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise _PreviewError(f"cannot decode {os.path.basename(path)!r}: {exc}") from None
        buf = io.BytesIO()
        if fmt is not None:
            if fmt == "jpeg" or channel == "rgb":
                img = img.convert("RGB")
            elif img.mode not in ("RGB", "RGBA", "L", "LA"):
                img = img.convert("RGBA")
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


async def upload_image(request: web.Request, dirs: dict[str, str], timeout: float = 120.0) -> web.Response:
    """ComfyUI's ``/upload/image``: a name clash gets ``name (1).ext`` unless the bytes are identical."""
    try:
        post = await asyncio.wait_for(request.post(), timeout)  # aiohttp answers 413 above client_max_size
    except asyncio.TimeoutError:
        return _bad(408, f"the upload did not arrive within {timeout:g} s")
    except (HttpProcessingError, ValueError) as exc:  # e.g. a NUL or a line break in a part's header
        return _bad(400, f"malformed multipart body: {getattr(exc, 'message', exc)!s}"[:300])
    image: Any = post.get("image")
    if image is None or not hasattr(image, "file"):
        return _bad(400, "send the file as multipart field 'image'")
    filename = image.filename or ""
    problem = name_problem(filename)
    if problem:
        return _bad(400, problem)
    kind = str(post.get("type") or "input")
    if kind not in dirs:
        return _bad(400, f"type must be one of {sorted(dirs)}, got {kind!r}")
    overwrite = str(post.get("overwrite", "")).lower() in ("true", "1")
    subfolder = str(post.get("subfolder", ""))
    if "\0" in subfolder:
        return _bad(400, "subfolder must not contain NUL characters")
    upload_dir = os.path.abspath(dirs[kind])
    folder = os.path.join(upload_dir, os.path.normpath(subfolder))
    path = os.path.abspath(os.path.join(folder, filename))
    if path == upload_dir or not _inside(upload_dir, path) or os.path.isabs(subfolder):
        return _bad(400, "subfolder and filename must stay inside the upload folder")
    data = image.file.read()
    loop = asyncio.get_running_loop()
    try:  # hashing and writing megabytes would hold up every other request
        name = await loop.run_in_executor(None, _store, upload_dir, path, data, overwrite)
    except _UploadError as exc:
        return _bad(400, str(exc))
    return web.json_response({"name": name, "subfolder": subfolder, "type": kind})


class _UploadError(ValueError):
    """An upload that would land outside its folder or on top of a folder."""


def _store(upload_dir: str, path: str, data: bytes, overwrite: bool) -> str:
    """Write ``data`` at ``path`` or the first free ``name (n).ext`` beside it; returns the name used."""
    folder, filename = os.path.split(path)
    stem, ext = os.path.splitext(filename)
    digest = None
    i = 1
    while True:
        real = resolve_inside(upload_dir, path)
        if real is None:
            raise _UploadError("subfolder and filename must stay inside the upload folder (a link there "
                               "points out of it)")
        if os.path.isdir(real):
            if overwrite:
                raise _UploadError(f"{filename!r} is a folder in the upload folder; pick another name")
        elif not os.path.exists(real) or overwrite:
            break
        elif os.path.isfile(real):
            digest = digest or _sha256(data)
            if _sha256(path=real) == digest:
                return filename  # the same bytes are already there: hand back that name, write nothing
        filename = f"{stem} ({i}){ext}"
        path = os.path.join(folder, filename)
        i += 1
    os.makedirs(os.path.dirname(real), exist_ok=True)
    if resolve_inside(upload_dir, real) is None:  # a link made while the folders were created
        raise _UploadError("subfolder and filename must stay inside the upload folder")
    # O_NOFOLLOW: ``real`` has no links left, so a link appearing there now is refused instead of followed.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(real, flags, 0o644)
    except OSError as exc:
        raise _UploadError(f"cannot write {filename!r}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return filename
