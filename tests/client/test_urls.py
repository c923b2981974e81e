"""Server addresses: bare host:port, credentials in the URL, and ck.share links with a token."""

from __future__ import annotations

import base64

from comfykit.client.server import split_url


def test_bare_host_port_gets_http():
    assert split_url("127.0.0.1:8188/") == ("http://127.0.0.1:8188", {})


def test_basic_credentials_become_a_header():
    url, headers = split_url("https://comfy:p%40ss@example.org:8443")
    assert url == "https://example.org:8443"
    assert base64.b64decode(headers["Authorization"].split()[1]) == b"comfy:p@ss"


def test_share_link_token_becomes_a_bearer_header():
    assert split_url("https://abc.ngrok.app/?token=s3cret") == ("https://abc.ngrok.app",
                                                                 {"Authorization": "Bearer s3cret"})


def test_path_prefix_is_kept():
    assert split_url("http://host/comfy/")[0] == "http://host/comfy"
