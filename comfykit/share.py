"""Share a local server on the internet through ngrok (pyngrok), with a password or token in front by default.

>>> server = ck.serve(port=0)                                     # doctest: +SKIP
>>> link = ck.share(server, authtoken="...")                      # prints the URL and a generated password
>>> link.close()

pyngrok is an optional extra (``pip install pyngrok``) imported only here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
import warnings
from typing import Any

from .errors import ServerError

_AUTH_MODES = ("basic", "token", None)
_COOKIE = "comfykit_token"


#: Shorter passwords and tokens get a warning: they can be guessed over the tunnel.
MIN_SECRET_LENGTH = 12


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _same(presented: bytes | str, expected: str) -> bool:
    """Constant-time comparison of any text (compare_digest refuses non-ASCII str, so compare UTF-8 bytes)."""
    if isinstance(presented, str):
        try:
            presented = _utf8(presented)
        except UnicodeEncodeError:  # a lone surrogate no client can mean
            return False
    return hmac.compare_digest(presented, _utf8(expected))


class BasicAuth:
    """Refuses requests without HTTP basic credentials ``username:password`` (401 with a browser prompt)."""

    def __init__(self, username: str, password: str):
        self.username = username
        self.password = password

    def check(self, request: Any) -> Any:
        """None when the request carries the credentials, else the 401 response to send."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(header[6:], validate=True).partition(b":")
            except (binascii.Error, ValueError):
                user, pw = b"", b""
            # Both comparisons always run, so the time taken does not tell which part was wrong.
            user_ok = _same(user, self.username)
            if _same(pw, self.password) and user_ok:
                return None
        from aiohttp import web

        return web.Response(status=401, text="authentication required",
                            headers={"WWW-Authenticate": 'Basic realm="comfykit", charset="UTF-8"'})

    def after(self, request: Any, response: Any) -> None:
        """Nothing to remember between requests: browsers resend basic credentials themselves."""


class TokenAuth:
    """Refuses requests without the token (``?token=``, ``Authorization: Bearer``, or the cookie it sets)."""

    def __init__(self, token: str):
        self.token = token

    def _presented(self, request: Any) -> str:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return header[7:]
        return request.query.get("token") or request.cookies.get(_COOKIE, "")

    def check(self, request: Any) -> Any:
        """None when the request carries the token, else a 401 response explaining how to pass it."""
        if _same(self._presented(request), self.token):
            return None
        from aiohttp import web

        return web.json_response({"error": "this server needs its access token: open the shared link that "
                                           "ends in ?token=..., or send 'Authorization: Bearer <token>'"},
                                 status=401)

    def after(self, request: Any, response: Any) -> None:
        """Turn a ``?token=`` visit into a cookie so the page's own requests and WebSocket pass too."""
        if _same(request.query.get("token", ""), self.token) and hasattr(response, "set_cookie") and not response.prepared:
            response.set_cookie(_COOKIE, self.token, httponly=True, samesite="Strict",
                                secure=request.headers.get("X-Forwarded-Proto") == "https")


class Share:
    """A live ngrok tunnel to a local server; ``.url`` is what to hand out, ``.close()`` ends it."""

    def __init__(self, public_url: str, local_url: str, *, username: str | None, password: str | None,
                 token: str | None, ngrok: Any, server: Any = None):
        self.public_url = public_url
        self.local_url = local_url
        self.username = username
        self.password = password
        self.token = token
        self._ngrok = ngrok
        self._server = server

    @property
    def url(self) -> str:
        """The link to open: with the token in it for token auth."""
        return f"{self.public_url}/?token={self.token}" if self.token else self.public_url

    def close(self) -> None:
        """Disconnect the tunnel and lift the auth check from the server."""
        if self._ngrok is not None:
            try:
                self._ngrok.disconnect(self.public_url)
            finally:
                self._ngrok = None
                if self._server is not None:
                    self._server.set_auth(None)

    def __enter__(self) -> Share:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:  # never print the secret again
        how = "basic auth" if self.password else ("token" if self.token else "NO AUTH")
        return f"Share({self.public_url!r} -> {self.local_url!r}, {how})"


def _warn_if_short(what: str, secret: str) -> None:
    if len(secret) < MIN_SECRET_LENGTH:
        warnings.warn(f"the share {what} has {len(secret)} characters; anyone who reaches the public URL can "
                      f"try to guess it: use at least {MIN_SECRET_LENGTH}, or leave {what}=None to get a "
                      "generated one", UserWarning, stacklevel=3)


def share(server: Any, *, authtoken: str | None = None, auth: str | None = "basic", username: str = "comfy",
          password: str | None = None, token: str | None = None, ngrok_path: str | None = None,
          region: str | None = None, quiet: bool = False) -> Share:
    """Open an ngrok tunnel to ``server`` (a port, or the handle ``ck.serve`` returned) with auth in front.

    ``auth="basic"`` (default) asks for ``username`` and a generated password, checked by the server itself for
    a comfykit server handle and by ngrok for a bare port; ``auth="token"`` (server handles only) requires a generated
    token; ``auth=None`` opens the server to anyone with the link and must be asked for explicitly.
    The authtoken comes from ``authtoken`` or ``$NGROK_AUTHTOKEN``.
    """
    if auth not in _AUTH_MODES:
        raise ValueError(f"auth must be 'basic', 'token' or None (no protection), got {auth!r}")
    handle = None if isinstance(server, int) else server
    if handle is not None and not (hasattr(handle, "port") and hasattr(handle, "set_auth")):
        raise TypeError(f"share() takes a port number or the handle ck.serve() returned, got {server!r}")
    port = server if isinstance(server, int) else int(handle.port)
    if auth == "token" and handle is None:
        raise ValueError("auth='token' is checked by the comfykit server itself: pass the handle from ck.serve() "
                         "instead of a port, or use auth='basic'")
    authtoken = authtoken or os.environ.get("NGROK_AUTHTOKEN")
    if not authtoken:
        raise ServerError("sharing needs an ngrok authtoken: sign up at https://dashboard.ngrok.com, copy the token "
                          "from 'Your Authtoken', then pass share(..., authtoken='...') or set NGROK_AUTHTOKEN")
    try:
        from pyngrok import conf, ngrok
        from pyngrok.exception import PyngrokError
    except ImportError:
        raise ServerError("sharing needs pyngrok: pip install pyngrok (or pip install 'comfykit[share]')") from None

    options: dict[str, Any] = {}
    checker: Any = None
    if auth == "basic":
        if ":" in username:
            raise ValueError(f"username must not contain ':', got {username!r}")
        if password is not None:
            _warn_if_short("password", password)
        password = password or secrets.token_urlsafe(12)
        if handle is None:  # a bare port: only ngrok can check
            options["basic_auth"] = [f"{username}:{password}"]
        else:  # our own server checks itself (works on every ngrok plan, and for local requests too)
            checker = BasicAuth(username, password)
    elif auth == "token":
        if token is not None:
            _warn_if_short("token", token)
        token = token or secrets.token_urlsafe(24)
        checker = TokenAuth(token)
    # Install our own check first, so no request slips through between the tunnel opening and the check.
    if handle is not None:
        handle.set_auth(checker)
    config = conf.PyngrokConfig(auth_token=authtoken, ngrok_path=ngrok_path or conf.get_default().ngrok_path,
                                region=region)
    try:
        tunnel = ngrok.connect(str(port), "http", pyngrok_config=config, **options)
    except PyngrokError as exc:
        if handle is not None:
            handle.set_auth(None)
        raise ServerError(f"could not open the ngrok tunnel: {exc}. ngrok downloads its binary on first use "
                          "and needs internet access and a valid authtoken; offline, install ngrok yourself and "
                          "pass ngrok_path=..., or keep using the local address") from exc
    local_url = getattr(handle, "url", f"http://127.0.0.1:{port}")
    link = Share(tunnel.public_url, local_url, username=username if auth == "basic" else None,
                 password=password if auth == "basic" else None, token=token if auth == "token" else None,
                 ngrok=ngrok, server=handle)
    if not quiet:
        print(f"Shared {local_url} at {link.url}")
        if auth == "basic":
            print(f"  user: {username}  password: {password}   (shown once; keep it private)")
        elif auth == "token":
            print("  the token is part of the link; anyone holding the link can use the server")
        else:
            print("  WARNING: no authentication - anyone with the link can run workflows on this machine")
    return link
