"""ck.share: ngrok is replaced by a fake (no network); the server behind it is real and must refuse strangers."""

from __future__ import annotations

import types

import pytest
import requests

pyngrok = pytest.importorskip("pyngrok")
from pyngrok import ngrok  # noqa: E402
from pyngrok.exception import PyngrokNgrokInstallError  # noqa: E402

from comfykit.errors import ServerError  # noqa: E402
from comfykit.share import share  # noqa: E402


@pytest.fixture
def fake_ngrok(monkeypatch):
    calls = {"connect": [], "disconnect": []}

    def connect(addr=None, proto=None, pyngrok_config=None, **options):
        calls["connect"].append({"addr": addr, "proto": proto, "config": pyngrok_config, **options})
        return types.SimpleNamespace(public_url="https://abc.ngrok-free.app")

    monkeypatch.setattr(ngrok, "connect", connect)
    monkeypatch.setattr(ngrok, "disconnect", lambda url: calls["disconnect"].append(url))
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    return calls


def test_without_authtoken_fails_at_once_saying_what_to_do(fake_ngrok, server):
    with pytest.raises(ServerError, match="NGROK_AUTHTOKEN"):
        share(server)
    assert fake_ngrok["connect"] == []
    assert requests.get(server.url + "/features", timeout=30).status_code == 200  # nothing changed


def test_basic_auth_is_enforced_by_the_server(fake_ngrok, server, capsys):
    link = share(server, authtoken="tok")
    try:
        out = capsys.readouterr().out
        assert link.password and link.password in out and "https://abc.ngrok-free.app" in out
        assert link.password not in repr(link)
        call = fake_ngrok["connect"][0]
        assert call["addr"] == str(server.port) and call["config"].auth_token == "tok"
        assert requests.get(server.url + "/features", timeout=30).status_code == 401
        assert requests.post(server.url + "/prompt", json={}, timeout=30).status_code == 401
        wrong = requests.get(server.url + "/features", auth=("comfy", "nope"), timeout=30)
        assert wrong.status_code == 401 and "Basic" in wrong.headers["WWW-Authenticate"]
        assert requests.get(server.url + "/features", auth=("comfy", link.password), timeout=30).status_code == 200
    finally:
        link.close()
    assert fake_ngrok["disconnect"] == ["https://abc.ngrok-free.app"]
    assert requests.get(server.url + "/features", timeout=30).status_code == 200


def test_token_auth_accepts_link_header_and_cookie(fake_ngrok, server, monkeypatch):
    monkeypatch.setenv("NGROK_AUTHTOKEN", "from-env")
    with share(server, auth="token", quiet=True) as link:
        assert link.url == f"https://abc.ngrok-free.app/?token={link.token}"
        assert fake_ngrok["connect"][0]["config"].auth_token == "from-env"
        assert requests.get(server.url + "/", timeout=30).status_code == 401
        session = requests.Session()
        assert session.get(server.url + "/", params={"token": link.token}, timeout=30).status_code == 200
        assert session.get(server.url + "/features", timeout=30).status_code == 200  # the cookie it set
        bearer = {"Authorization": f"Bearer {link.token}"}
        assert requests.get(server.url + "/features", headers=bearer, timeout=30).status_code == 200
    assert requests.get(server.url + "/features", timeout=30).status_code == 200


def test_bare_port_uses_ngrok_basic_auth_and_no_auth_must_be_explicit(fake_ngrok, capsys):
    link = share(8188, authtoken="tok", password="pw-long-enough")
    assert fake_ngrok["connect"][-1]["basic_auth"] == ["comfy:pw-long-enough"]
    with pytest.raises(ValueError, match="handle"):
        share(8188, authtoken="tok", auth="token")
    with pytest.raises(ValueError, match="auth must be"):
        share(8188, authtoken="tok", auth="none")
    open_link = share(8188, authtoken="tok", auth=None)
    assert "basic_auth" not in fake_ngrok["connect"][-1]
    assert "WARNING" in capsys.readouterr().out and "NO AUTH" in repr(open_link)
    link.close()
    open_link.close()


def test_offline_ngrok_becomes_a_clear_error_and_leaves_the_server_open(monkeypatch, server):
    def offline(*args, **kwargs):
        raise PyngrokNgrokInstallError("An error occurred while downloading ngrok: Name or service not known")

    monkeypatch.setattr(ngrok, "connect", offline)
    with pytest.raises(ServerError, match="ngrok_path"):
        share(server, authtoken="tok")
    assert requests.get(server.url + "/features", timeout=30).status_code == 200
