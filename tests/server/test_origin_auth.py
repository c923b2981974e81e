"""The loopback origin check on canonical hosts, credentials in any script, weak-password warnings, timeouts."""

from __future__ import annotations

import socket
import time
import types

import pytest
import requests

from comfykit.server.guard import canonical_host, cross_origin, is_local_host

LOOPBACK_SPELLINGS = ["localhost.", "foo.localhost", "0.0.0.0", "[::ffff:127.0.0.1]", "127.1", "2130706433",
                      "LOCALHOST", "[::1]", "0x7f.1", "127.0.0.1."]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_loopback_spellings_are_local(host):
    assert is_local_host(host)


@pytest.mark.parametrize("host,canonical", [("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
                                            ("[::ffff:127.0.0.1]", "127.0.0.1"), ("Localhost.", "localhost"),
                                            ("example.com", "example.com"), ("[::1]", "::1")])
def test_canonical_host(host, canonical):
    assert canonical_host(host) == canonical


@pytest.mark.parametrize("host", ["example.com", "192.168.1.5", "10.0.0.1", "localhost.example.com", ""])
def test_other_hosts_are_not_local(host):
    assert not is_local_host(host)


def test_cross_origin_compares_ports_and_canonical_names():
    assert not cross_origin("127.0.0.1:8188", "http://127.0.0.1:8188")
    assert not cross_origin("localhost", "http://localhost")
    assert not cross_origin("localhost", "https://localhost:443")
    assert cross_origin("127.0.0.1:8188", "http://127.0.0.1:8189")
    assert cross_origin("127.0.0.1:8188", "null")
    assert cross_origin("localhost.:8188", "http://evil.example:8188")


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_foreign_origin_post_is_refused_for_every_loopback_host_spelling(server, host):
    headers = {"Host": f"{host}:{server.port}", "Origin": "http://evil.example"}
    answer = requests.post(server.url + "/prompt", json={}, headers=headers, timeout=30)
    assert answer.status_code == 403


@pytest.mark.parametrize("host", ["localhost.", "foo.localhost", "0.0.0.0", "[::ffff:127.0.0.1]", "127.1",
                                  "2130706433"])
def test_foreign_origin_websocket_is_refused_for_every_loopback_host_spelling(server, host):
    import websocket

    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(server.url.replace("http://", "ws://") + "/ws", timeout=30,
                                    host=f"{host}:{server.port}", origin="http://evil.example")
    assert info.value.status_code == 403


def test_same_origin_under_a_non_canonical_host_still_works(server):
    headers = {"Host": f"localhost.:{server.port}", "Origin": f"http://localhost.:{server.port}"}
    answer = requests.post(server.url + "/prompt", json={}, headers=headers, timeout=30)
    assert answer.status_code == 400  # reached the handler: no prompt


# -- credentials -------------------------------------------------------------------------------------------------
pyngrok = pytest.importorskip("pyngrok")


@pytest.fixture
def fake_ngrok(monkeypatch):
    from pyngrok import ngrok

    monkeypatch.setattr(ngrok, "connect", lambda *a, **k: types.SimpleNamespace(public_url="https://x.ngrok.app"))
    monkeypatch.setattr(ngrok, "disconnect", lambda url: None)


def test_non_ascii_basic_auth_password_works_and_wrong_ones_are_401(fake_ngrok, server):
    from comfykit.share import share

    password = "é-password-ünïcode"
    with share(server, authtoken="tok", password=password, quiet=True):
        ok = requests.get(server.url + "/features", auth=(b"comfy", password.encode("utf-8")), timeout=30)
        assert ok.status_code == 200
        for user, pw in [(b"comfy", "é-wrong".encode()), ("ü".encode(), password.encode()),
                         (b"comfy", b"\xff\xfe"), (b"comfy", password.encode("latin-1", "replace"))]:
            assert requests.get(server.url + "/features", auth=(user, pw), timeout=30).status_code == 401


def test_non_ascii_username_works(fake_ngrok, server):
    from comfykit.share import share

    with share(server, authtoken="tok", username="jürgen", password="a-long-enough-pw", quiet=True):
        ok = requests.get(server.url + "/features", auth=("jürgen".encode(), b"a-long-enough-pw"), timeout=30)
        assert ok.status_code == 200


def test_non_ascii_token_works_and_wrong_ones_are_401(fake_ngrok, server):
    from comfykit.share import share

    token = "tökén-with-ünïcode"
    with share(server, authtoken="tok", auth="token", token=token, quiet=True):
        assert requests.get(server.url + "/features", params={"token": token}, timeout=30).status_code == 200
        bearer = {"Authorization": b"Bearer " + token.encode()}
        assert requests.get(server.url + "/features", headers=bearer, timeout=30).status_code == 200
        for wrong in ({"Authorization": "Bearer é"}, {"Authorization": b"Bearer \xff\xfe"}):
            assert requests.get(server.url + "/features", headers=wrong, timeout=30).status_code == 401
        assert requests.get(server.url + "/features", params={"token": "é"}, timeout=30).status_code == 401


def test_short_share_passwords_and_tokens_warn(fake_ngrok, server):
    from comfykit.share import share

    with pytest.warns(UserWarning, match="at least 12"):
        share(server, authtoken="tok", password="a", quiet=True).close()
    with pytest.warns(UserWarning, match="at least 12"):
        share(server, authtoken="tok", auth="token", token="short", quiet=True).close()


def test_generated_and_long_passwords_do_not_warn(fake_ngrok, server, recwarn):
    from comfykit.share import share

    share(server, authtoken="tok", quiet=True).close()
    share(server, authtoken="tok", password="twelve-chars", quiet=True).close()
    assert not [w for w in recwarn if "at least 12" in str(w.message)]


# -- timeouts ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def impatient(engine):
    from comfykit.server import create_app
    from comfykit.server.runner import start_background

    handle = start_background(engine, create_app(engine, header_timeout=0.5, body_timeout=0.5), "127.0.0.1", 0)
    yield handle
    handle.stop()


def _closed_within(sock: socket.socket, limit: float, until: bytes | None = None) -> bytes:
    """What the server sent until it closed the connection (or sent ``until``); fails after ``limit`` seconds."""
    sock.settimeout(limit)
    got = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        chunk = sock.recv(4096)
        if not chunk or (until is not None and until in got + chunk):
            return got + chunk
        got += chunk
    raise AssertionError(f"connection still open after {limit}s")


def test_half_sent_headers_are_dropped(impatient):
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=30) as sock:
        sock.sendall(b"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        _closed_within(sock, 20)


@pytest.mark.parametrize("path", ["/prompt", "/upload/image", "/queue"])
def test_half_sent_bodies_get_408(impatient, path):
    kind = b"multipart/form-data; boundary=xyz" if path == "/upload/image" else b"application/json"
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=30) as sock:
        sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + kind +
                     b"\r\nContent-Length: 1000\r\n\r\n--xyz\r\n{\"pro")
        answer = _closed_within(sock, 20, until=b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
