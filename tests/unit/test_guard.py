"""What a request must show before its body is read, and the safe defaults on loopback."""

from __future__ import annotations

import io
import socket
import stat
import threading
import time

import falcon.testing
import waitress

from modaclouds_batch.access.local_token import ensure_local_admin_token
from modaclouds_batch.app import build_gateway, request_guard, wsgi_app
from modaclouds_batch.client import BatchClient
from modaclouds_batch.server import install
from modaclouds_batch.settings import Settings, load_settings

from .apps import admin_client

MB = 1 << 20


def local(gateway, **headers):
    return falcon.testing.TestClient(wsgi_app(gateway), headers={"Host": "127.0.0.1:5000", **headers})


class Unreadable(io.RawIOBase):
    """A body that fails the test if anything reads it."""

    def readable(self):
        return True

    def readinto(self, buffer):
        raise AssertionError("the body was read")


def test_tokens_are_on_by_default():
    assert Settings().auth_enabled is True


def test_a_foreign_host_is_refused_on_loopback_even_with_a_token(gateway):
    client = admin_client(gateway)
    resp = client.simulate_get("/jobs", headers={"Host": "rebound.attacker.example:5000"})
    assert resp.status_code == 403 and "rebound.attacker.example" in resp.json["error"]
    assert client.simulate_get("/jobs", headers={"Host": "[::1]:5000"}).status_code == 200
    assert client.simulate_get("/jobs").status_code == 200


def test_allowed_hosts_and_the_public_url_add_names(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "allowed_hosts": "batch.lab, other",
                                                "public_url": "https://gw.example.org/"}, environ={}))
    try:
        client = admin_client(gw)
        for host in ("batch.lab", "other:80", "gw.example.org"):
            assert client.simulate_get("/quota", headers={"Host": host}).status_code == 200, host
        assert client.simulate_get("/quota", headers={"Host": "evil.example"}).status_code == 403
    finally:
        gw.store.close()


def test_a_cross_site_form_post_is_refused_before_the_app_with_or_without_a_token(gateway):
    form = {"body": "job-name=x", "headers": {"Content-Type": "application/x-www-form-urlencoded",
                                              "Origin": "https://attacker.example"}}
    assert admin_client(gateway).simulate_post("/jobs", **form).status_code == 403
    assert local(gateway).simulate_post("/jobs", **form).status_code == 403
    null_origin = admin_client(gateway).simulate_post("/tokens", json={"owner": "x"}, headers={"Origin": "null"})
    assert null_origin.status_code == 403
    same_site = admin_client(gateway).simulate_post("/tokens", json={"owner": "bob"},
                                                    headers={"Origin": "http://localhost:5000"})
    assert same_site.status_code == 201, same_site.text


def test_a_page_of_another_local_port_is_another_site(gateway):
    """A notebook on localhost:8888 is not the gateway on localhost:5000."""
    client = admin_client(gateway)
    other_port = client.simulate_post("/tokens", json={"owner": "bob"}, headers={"Origin": "http://localhost:8888"})
    assert other_port.status_code == 403
    https = client.simulate_post("/tokens", json={"owner": "bob"}, headers={"Origin": "https://localhost:5000"})
    assert https.status_code == 403  # another scheme is another origin
    assert client.simulate_get("/jobs", headers={"Origin": "http://localhost:8888"}).status_code == 200


def test_a_proxy_name_is_an_own_origin_whatever_its_port(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "public_url": "https://batch.example.org"},
                                     environ={}))
    try:
        resp = admin_client(gw).simulate_post("/tokens", json={"owner": "bob"},
                                              headers={"Origin": "https://batch.example.org"})
        assert resp.status_code == 201, resp.text
    finally:
        gw.store.close()


def test_without_a_token_the_answer_is_401_and_the_body_is_never_read(gateway):
    resp = local(gateway).simulate_post("/jobs", headers={"Content-Length": str(300 * MB)},
                                        extras={"wsgi.input": Unreadable()})
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    forged = local(gateway, Authorization="Bearer mcb_forged").simulate_post(
        "/jobs", headers={"Content-Length": str(300 * MB)}, extras={"wsgi.input": Unreadable()})
    assert forged.status_code == 401 and "unknown API token" in forged.json["error"]


def test_a_body_over_the_callers_allowance_is_413_unread(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "max_upload_bytes": MB}, environ={}))
    try:
        resp = admin_client(gw).simulate_post("/jobs", headers={"Content-Length": str(300 * MB)},
                                              extras={"wsgi.input": Unreadable()})
        assert resp.status_code == 413 and "max_upload_bytes" in resp.json["error"]
    finally:
        gw.store.close()


def test_with_auth_off_no_token_is_minted_and_hosts_are_still_checked(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "auth": False}, environ={}))
    try:
        client = local(gw)
        minted = client.simulate_post("/tokens", json={"owner": "mallory", "role": "admin"})
        assert minted.status_code == 403 and "auth is off" in minted.json["error"]
        assert gw.store.list_tokens(None) == []
        assert client.simulate_get("/jobs").status_code == 200
        assert client.simulate_get("/jobs", headers={"Host": "attacker.example"}).status_code == 403
    finally:
        gw.store.close()


def test_the_local_admin_token_is_written_once_owner_only_and_works(gateway, tmp_path):
    path = tmp_path / "admin-token"
    assert ensure_local_admin_token(gateway.tokens, path) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert gateway.tokens.verify(token).is_admin
    assert ensure_local_admin_token(gateway.tokens, path) is False
    assert path.read_text().strip() == token
    path.write_text("mcb_from_an_older_database\n")
    assert ensure_local_admin_token(gateway.tokens, path) is True
    assert gateway.tokens.verify(path.read_text().strip()).is_admin


def test_the_client_sends_the_local_token_to_loopback_urls_only(tmp_path, monkeypatch):
    monkeypatch.delenv("MODACLOUDS_BATCH_TOKEN", raising=False)
    (tmp_path / "admin-token").write_text("mcb_local\n")
    for url in ("http://127.0.0.1:5000", "http://localhost:8080", "http://[::1]:5000"):
        assert BatchClient(url, home=tmp_path).http.headers["Authorization"] == "Bearer mcb_local", url
    assert "Authorization" not in BatchClient("http://gateway.example.org:5000", home=tmp_path).http.headers
    monkeypatch.setenv("MODACLOUDS_BATCH_HOME", str(tmp_path))
    assert BatchClient("http://127.0.0.1:5000").token == "mcb_local"
    monkeypatch.setenv("MODACLOUDS_BATCH_TOKEN", "mcb_env")
    assert BatchClient("http://127.0.0.1:5000").token == "mcb_env"


def test_the_server_answers_401_at_the_headers_of_an_unauthenticated_upload(gateway):
    """A raw socket sends only the headers of a 300 MB upload; the 401 comes without the body."""
    server = waitress.create_server(lambda e, s: [], host="127.0.0.1", port=0, threads=1)
    guard = request_guard(gateway, on_loopback=True)
    install(server, wsgi_app(gateway, guard), guard)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        with socket.create_connection(server.socket.getsockname(), timeout=5) as sock:
            sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % (300 * MB))
            started = time.monotonic()
            answer = _read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 401 "), answer
        assert b"Bearer" in answer and time.monotonic() - started < 5
    finally:
        server.close()


def _read_answer(sock) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
