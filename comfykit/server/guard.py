"""Request guards: the loopback origin check on canonical host names, and the headers every response carries."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

#: The Content-Security-Policy of every response but the page: nothing runs, nothing loads but images and media.
DEFAULT_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"

_LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")


def canonical_host(host: str) -> str:
    """``host`` as the address it reaches: lower case, no trailing dot, IPs in standard form.

    Legacy IPv4 spellings (``127.1``, ``2130706433``, ``0x7f.1``) and IPv4-mapped IPv6 (``::ffff:127.0.0.1``)
    become dotted quads, since browsers and resolvers treat them as such.
    """
    name = host.strip().lower().strip("[]").rstrip(".")
    try:
        ip = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        ip = None
        if name and _LEGACY_IPV4.fullmatch(name) and any(c.isdigit() for c in name):
            try:
                ip = ipaddress.IPv4Address(socket.inet_aton(name))
            except OSError:
                ip = None
    if ip is None:
        return name
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def is_local_host(host: str | None) -> bool:
    """True when ``host`` reaches this machine only: localhost names, loopback or unspecified addresses."""
    if not host:
        return False
    name = canonical_host(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _split(netloc: str) -> tuple[str, int | None]:
    """(host, port) of a ``host[:port]`` string; port None when absent or not a number."""
    try:
        parsed = urlsplit("//" + netloc)
        return parsed.hostname or "", parsed.port
    except ValueError:
        return netloc, None


def cross_origin(host: str, origin: str) -> bool:
    """True when the ``Origin`` header names another host or port than the ``Host`` header."""
    host_name, host_port = _split(host)
    try:
        parsed = urlsplit(origin)
        origin_name, origin_port = parsed.hostname or "", parsed.port
    except ValueError:
        return True
    if origin_port is None:
        origin_port = {"http": 80, "https": 443}.get(parsed.scheme)
    if host_port is None:  # default ports are implied on one side and spelled out on the other
        port_ok = origin_port in (80, 443)
    else:
        port_ok = origin_port == host_port
    return not port_ok or canonical_host(host_name) != canonical_host(origin_name)


def origin_only_middleware() -> Any:
    """403 for requests whose Origin differs from Host on a loopback server (drive-by POSTs from websites)."""

    @web.middleware
    async def origin_only(request: web.Request, handler: Any) -> web.StreamResponse:
        host = request.headers.get("Host")
        origin = request.headers.get("Origin")
        if host and origin and is_local_host(_split(host)[0]) and cross_origin(host, origin):
            return web.json_response({"error": "cross-origin request refused by this local server; start "
                                      "it with --enable-cors-header to allow other origins"}, status=403)
        return await handler(request)

    return origin_only


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, errors and sockets included: no MIME sniffing and a restrictive CSP."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Content-Security-Policy", DEFAULT_CSP)
