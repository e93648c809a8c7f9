"""Users, tokens and isolation, through HTTP against the real pool."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from .fixtures import GATEWAY_ENV
from .gateway import Client, GatewayProcess, pack_bundle

pytestmark = pytest.mark.integration


def cli_token(home, owner, role="user", expires_in=None) -> dict:
    args = [sys.executable, "-m", "modaclouds_batch", "--home", str(home), "token", "create",
            "--owner", owner, "--role", role, "--json"]
    if expires_in is not None:
        args += ["--expires-in", str(expires_in)]
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


class AuthedClient(Client):
    def __init__(self, url, token):
        super().__init__(url)
        self.http.headers["Authorization"] = f"Bearer {token}"


@pytest.fixture(scope="module")
def secured(tmp_path_factory, condor_config):
    home = tmp_path_factory.mktemp("secured")
    gateway = GatewayProcess(home, condor_config, env={**GATEWAY_ENV, "MODACLOUDS_BATCH_AUTH": "true"}).start()
    tokens = {name: cli_token(home, name, role) for name, role in
              (("alice", "user"), ("bob", "user"), ("root", "admin"))}
    clients = {name: AuthedClient(gateway.url, t["token"]) for name, t in tokens.items()}
    yield gateway, clients, tokens
    gateway.stop()


@pytest.fixture(scope="module")
def alice_job(secured):
    _, clients, _ = secured
    resp = clients["alice"].submit(pack_bundle("hello"), name="alice-private", notify="http://127.0.0.1:9/none")
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["job_id"]
    clients["alice"].wait_for(job_id, "completed", timeout=180)
    return job_id


def test_requests_without_a_valid_token_are_401(secured):
    gateway, _, tokens = secured
    anonymous = Client(gateway.url)
    resp = anonymous.get("/jobs")
    assert resp.status_code == 401 and "Bearer" in resp.json()["error"]
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert AuthedClient(gateway.url, "mcb_forged").get("/jobs").status_code == 401
    assert anonymous.get("/health").status_code in (200, 503)  # liveness stays public

    expiring = cli_token(gateway.home, "carol", expires_in=1)
    time.sleep(1.5)
    resp = AuthedClient(gateway.url, expiring["token"]).get("/jobs")
    assert resp.status_code == 401 and "expired" in resp.json()["error"]


def test_a_revoked_token_stops_working(secured):
    gateway, clients, _ = secured
    created = clients["root"].post("/tokens", json={"owner": "dave"})
    assert created.status_code == 201
    dave = AuthedClient(gateway.url, created.json()["token"])
    assert dave.get("/jobs").status_code == 200
    assert clients["root"].http.delete(f"{gateway.url}/tokens/{created.json()['id']}").status_code == 204
    resp = dave.get("/jobs")
    assert resp.status_code == 401 and "revoked" in resp.json()["error"]


def test_users_see_and_touch_only_their_own_jobs(secured, alice_job):
    _, clients, _ = secured
    alice, bob, root = clients["alice"], clients["bob"], clients["root"]
    assert alice_job in [j["id"] for j in alice.get("/jobs").json()]
    assert alice_job not in [j["id"] for j in bob.get("/jobs").json()]
    for path in (f"/jobs/{alice_job}", f"/jobs/{alice_job}/events", f"/jobs/{alice_job}/notifications",
                 f"/jobs/{alice_job}/artifacts/stdout", f"/jobs/{alice_job}/artifacts/output"):
        assert alice.get(path).status_code == 200, path
        resp = bob.get(path)
        assert resp.status_code == 404, path  # not 403: ids do not leak
        assert root.get(path).status_code == 200, path
    for action in ("hold", "remove"):
        assert bob.post(f"/jobs/{alice_job}/{action}").status_code == 404
    assert bob.get("/jobs", params={"owner": "alice"}).status_code == 403
    only_alice = root.get("/jobs", params={"owner": "alice"}).json()
    assert only_alice and {j["id"] for j in only_alice} >= {alice_job}
    assert alice.get(f"/jobs/{alice_job}").json()["owner"] == "alice"


def test_admin_routes_are_403_for_users(secured, alice_job):
    _, clients, _ = secured
    bob = clients["bob"]
    assert bob.post("/tokens", json={"owner": "bob", "role": "admin"}).status_code == 403
    assert bob.get("/audit").status_code == 403
    assert bob.http.put(f"{bob.url}/users/bob/limits", json={"max_active_jobs": 9999}).status_code == 403
    for path in ("/pool", "/workers", "/workers/requests"):
        assert bob.get(path).status_code == 403, path
    assert bob.post("/workers", json={"provider": "local"}).status_code == 403
    event_id = clients["root"].get(f"/jobs/{alice_job}/notifications").json()[0]["event_id"]
    assert clients["alice"].post(f"/jobs/{alice_job}/notifications/{event_id}/resend").status_code == 403


def test_audit_log_records_who_did_what(secured, alice_job):
    _, clients, _ = secured
    clients["alice"].get(f"/jobs/{alice_job}/artifacts/stdout")
    entries = clients["root"].get("/audit", params={"actor": "alice"}).json()
    actions = {(e["action"], e["target"]) for e in entries}
    assert ("job.submit", alice_job) in actions
    assert ("job.download", alice_job) in actions
    assert all(e["actor"] == "alice" for e in entries)


def test_refused_requests_appear_in_the_audit_with_the_client_address(secured, alice_job):
    gateway, clients, _ = secured
    no_token, not_yours = str(uuid.uuid4()), str(uuid.uuid4())
    anonymous = Client(gateway.url).get("/jobs", headers={"X-Request-Id": no_token})
    assert anonymous.status_code == 401 and anonymous.headers["X-Content-Type-Options"] == "nosniff"
    assert clients["bob"].get(f"/jobs/{alice_job}", headers={"X-Request-Id": not_yours}).status_code == 404
    entries = clients["root"].get("/audit", params={"action": "request.refused"}).json()
    by_request = {e["request_id"]: e for e in entries}
    assert by_request[no_token]["actor"] is None and by_request[no_token]["client"] == "127.0.0.1"
    assert by_request[no_token]["detail"]["status"] == 401 and by_request[no_token]["outcome"] == "refused"
    assert by_request[not_yours]["actor"] == "bob" and by_request[not_yours]["target"] == alice_job
    assert by_request[not_yours]["detail"] == {
        "status": 404, "method": "GET", "path": f"/jobs/{alice_job}",
        "error": f"no job with id {alice_job}; GET /jobs lists the jobs you can see"}


def test_data_is_served_as_octet_stream_unless_its_type_is_safe(secured):
    _, clients, _ = secured
    alice = clients["alice"]
    page = alice.post("/data", data=b"<script>alert(document.cookie)</script>",
                      params={"filename": "page.html"}, headers={"Content-Type": "text/html"}).json()
    served = alice.get(f"/data/{page['id']}")
    assert served.headers["Content-Type"] == "application/octet-stream"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert page["content_type"] == "text/html"  # kept as given, in the metadata


def test_limits_answer_429_with_retry_after_and_quota_tells_what_is_left(secured):
    gateway, clients, _ = secured
    root = clients["root"]
    erin = AuthedClient(gateway.url, cli_token(gateway.home, "erin")["token"])
    assert root.http.put(f"{root.url}/users/erin/limits",
                         json={"max_active_jobs": 1, "submissions_per_minute": 2}).status_code == 200
    assert erin.get("/quota").json()["may_submit_now"] == 1
    first = erin.submit(pack_bundle("sleeper"), name="erin-1", arguments="300")
    assert first.status_code == 201
    over_active = erin.submit(pack_bundle("hello"), name="erin-2")
    assert over_active.status_code == 429
    assert over_active.json()["limit"] == "max_active_jobs" and int(over_active.headers["Retry-After"]) > 0
    quota = erin.get("/quota").json()
    assert quota["may_submit_now"] == 0 and quota["active_jobs"] == 1

    erin.post(f"/jobs/{first.json()['job_id']}/remove")
    erin.wait_for(first.json()["job_id"], "removed", timeout=60)
    assert erin.submit(pack_bundle("hello"), name="erin-3").status_code == 201
    erin.wait_for(erin.get("/jobs").json()[0]["id"], "completed", timeout=180)
    over_rate = erin.submit(pack_bundle("hello"), name="erin-4")
    assert over_rate.status_code == 429 and over_rate.json()["limit"] == "submissions_per_minute"
    assert 0 < int(over_rate.headers["Retry-After"]) <= 60

    frank = AuthedClient(gateway.url, cli_token(gateway.home, "frank")["token"])
    root.http.put(f"{root.url}/users/frank/limits", json={"max_upload_bytes": 1000})
    too_big = frank.submit(pack_bundle("hello") + b"\0" * 2000, name="frank-big")
    assert too_big.status_code == 413 and too_big.json()["limit"] == 1000


def test_each_user_gets_their_own_accounting_group(secured, schedd):
    _, clients, _ = secured
    tag = uuid.uuid4().hex[:6]
    ids = {name: clients[name].submit(pack_bundle("hello"), name=f"acct-{tag}").json()["job_id"]
           for name in ("alice", "bob")}
    groups = {}
    for name, job_id in ids.items():
        ads = schedd.query(f'GatewayJobId == "{job_id}"', ["AcctGroup", "AcctGroupUser", "GatewayOwner"]) or \
            schedd.history(f'GatewayJobId == "{job_id}"', ["AcctGroup", "AcctGroupUser", "GatewayOwner"], match=1)
        groups[name] = (ads[0].get("AcctGroup"), ads[0].get("AcctGroupUser"), ads[0].get("GatewayOwner"))
    assert groups == {"alice": ("group_alice", "alice", "alice"), "bob": ("group_bob", "bob", "bob")}
