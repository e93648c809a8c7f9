"""Refused requests are audited with the client address; data is served with safe types;
every answer says nosniff. Through the real app, without a pool (nothing here reaches HTCondor)."""

import json
import socket
import threading
import uuid

import falcon.testing
import pytest
import waitress

from modaclouds_batch.access import audit as audit_module
from modaclouds_batch.app import build_gateway, create_app, request_guard, wsgi_app
from modaclouds_batch.server import install
from modaclouds_batch.settings import load_settings


@pytest.fixture
def gateway(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "auth": True, "max_active_jobs_per_user": 0},
                                     environ={}))
    yield gw
    gw.store.close()


@pytest.fixture
def client(gateway):
    return falcon.testing.TestClient(create_app(gateway))


def bearer(gateway, owner, role="user"):
    token, _ = gateway.tokens.create(owner, role)
    return {"Authorization": f"Bearer {token}"}


def refusals(client, admin):
    return client.simulate_get("/audit", params={"action": "request.refused"}, headers=admin).json


def test_each_kind_of_refusal_is_audited_with_the_client_address(client, gateway):
    admin, alice, bob = bearer(gateway, "root", "admin"), bearer(gateway, "alice"), bearer(gateway, "bob")
    bobs = client.simulate_post("/data", body=b"bob's", params={"filename": "b.txt"}, headers=bob).json["id"]
    missing = str(uuid.uuid4())

    assert client.simulate_get("/jobs", remote_addr="203.0.113.9").status_code == 401
    assert client.simulate_get("/jobs", headers={"Authorization": "Bearer mcb_forged"}).status_code == 401
    assert client.simulate_get("/audit", headers=alice).status_code == 403
    assert client.simulate_get(f"/data/{bobs}", headers=alice).status_code == 404
    assert client.simulate_get(f"/data/{missing}", headers=alice).status_code == 404  # nobody's: not a refusal
    assert client.simulate_post("/jobs", body=b"job-bundle=echo+hi", headers={
        **alice, "Content-Type": "application/x-www-form-urlencoded"}).status_code == 429

    entries = refusals(client, admin)[::-1]
    assert [e["detail"]["status"] for e in entries] == [401, 401, 403, 404, 429]
    assert all(e["outcome"] == "refused" for e in entries)
    no_token, forged, forbidden, not_yours, limited = entries
    assert no_token["client"] == "203.0.113.9" and no_token["actor"] is None
    assert no_token["detail"]["path"] == "/jobs" and "token" in no_token["detail"]["error"]
    assert forged["client"] == "127.0.0.1"
    assert forbidden["actor"] == "alice" and forbidden["detail"]["path"] == "/audit"
    assert not_yours["actor"] == "alice" and not_yours["target"] == bobs
    assert limited["actor"] == "alice" and limited["detail"]["method"] == "POST"
    # The successes carry the address too; the audit can be filtered by outcome.
    [upload] = client.simulate_get("/audit", params={"action": "data.create"}, headers=admin).json
    assert upload["actor"] == "bob" and upload["client"] == "127.0.0.1"
    outcomes = {e["outcome"] for e in client.simulate_get("/audit", params={"outcome": "refused"}, headers=admin).json}
    assert outcomes == {"refused"}


def test_another_users_job_token_and_array_are_refusals_too(client, gateway):
    admin, alice = bearer(gateway, "root", "admin"), bearer(gateway, "alice")
    _, bobs_token = gateway.tokens.create("bob")
    assert client.simulate_delete(f"/tokens/{bobs_token['id']}", headers=alice).status_code == 404
    assert client.simulate_delete(f"/tokens/{uuid.uuid4()}", headers=alice).status_code == 404
    [entry] = refusals(client, admin)
    assert entry["target"] == bobs_token["id"] and entry["detail"]["status"] == 404


def test_a_flood_of_refusals_is_bounded_per_client_and_counted(gateway, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(audit_module.time, "monotonic", lambda: clock[0])
    log = audit_module.AuditLog(gateway.store, refusals_per_minute=3)
    token = audit_module.client_address_var.set("198.51.100.1")
    try:
        recorded = [log.refused(None, 401, method="GET", path="/jobs", reason="no token") for _ in range(10)]
        assert recorded == [True] * 3 + [False] * 7
        clock[0] += 61
        assert log.refused(None, 401, method="GET", path="/jobs", reason="no token")
    finally:
        audit_module.client_address_var.reset(token)
    rows = gateway.store.audit_entries(None, "request.refused", None, 100)
    assert len(rows) == 4 and '"suppressed": 7' in rows[0]["detail"]


@pytest.mark.parametrize("given, served", [
    ("text/html", "application/octet-stream"),
    ("image/svg+xml", "application/octet-stream"),
    ("application/javascript", "application/octet-stream"),
    ("text/xml", "application/octet-stream"),
    ("Text/Plain; charset=utf-8", "text/plain; charset=utf-8"),
    ("text/plain; charset=\"utf-8\"; x=<script>", "text/plain; charset=utf-8"),
    ("application/gzip", "application/gzip"),
    ("image/png", "image/png"),
])
def test_data_is_served_with_its_type_only_when_that_type_is_safe(client, gateway, given, served):
    alice = bearer(gateway, "alice")
    created = client.simulate_post("/data", body=b"<script>alert(1)</script>", params={"filename": "x"},
                                   headers={**alice, "Content-Type": given})
    assert created.status_code == 201, created.text
    for method in (client.simulate_get, client.simulate_head):
        resp = method(f"/data/{created.json['id']}", headers=alice)
        assert resp.headers["content-type"] == served
        assert resp.headers["x-content-type-options"] == "nosniff"
    assert client.simulate_get(f"/data/{created.json['id']}/metadata", headers=alice).json["content_type"] == given


@pytest.mark.parametrize("path", ["/health", "/jobs", "/no/such/route", "/docs", "/openapi.json"])
def test_every_answer_says_nosniff(client, path):
    assert client.simulate_get(path).headers["x-content-type-options"] == "nosniff"


def test_refusals_before_the_app_are_audited_and_say_nosniff(gateway):
    guarded = falcon.testing.TestClient(wsgi_app(gateway), headers={"Host": "127.0.0.1:5000"})
    no_token = guarded.simulate_get("/jobs", remote_addr="203.0.113.7", headers={"X-Request-Id": "mine-1"})
    rebound = guarded.simulate_get("/jobs", headers={"Host": "attacker.example"}, remote_addr="203.0.113.8")
    assert (no_token.status_code, rebound.status_code) == (401, 403)
    assert no_token.headers["x-content-type-options"] == rebound.headers["x-content-type-options"] == "nosniff"
    entries = gateway.store.audit_entries(None, "request.refused", None, 10)[::-1]
    assert [(e["client"], json.loads(e["detail"])["status"]) for e in entries] == [
        ("203.0.113.7", 401), ("203.0.113.8", 403)]
    assert "attacker.example" in json.loads(entries[1]["detail"])["error"]
    assert entries[0]["request_id"] == "mine-1" and entries[1]["request_id"] is None


def test_a_refusal_at_the_headers_of_an_upload_is_audited_with_the_peer_address(gateway):
    server = waitress.create_server(lambda e, s: [], host="127.0.0.1", port=0, threads=1)
    guard = request_guard(gateway, on_loopback=True)
    install(server, wsgi_app(gateway, guard), guard)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        with socket.create_connection(server.socket.getsockname(), timeout=5) as sock:
            sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % (300 << 20))
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    finally:
        server.close()
    assert answer.startswith(b"HTTP/1.1 401 ") and b"X-Content-Type-Options: nosniff" in answer, answer
    [entry] = gateway.store.audit_entries(None, "request.refused", None, 10)
    assert entry["client"] == "127.0.0.1" and json.loads(entry["detail"])["method"] == "POST"
