"""Per-user webhook secrets and the owner's control of notifications, on the real pool.

One gateway of its own (tokens on, so there are two users; receivers on loopback; a
permanent refusal stops after 2 answers, not the default 3, to show the setting counts).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from modaclouds_batch.timefmt import now_iso, parse_iso

from ..receiver import Receiver
from .docs_examples import run_page
from .fixtures import GATEWAY_ENV
from .gateway import Client, GatewayProcess

pytestmark = pytest.mark.integration
PERMANENT_ATTEMPTS = 2


@pytest.fixture(scope="module")
def hooks_gateway(tmp_path_factory, condor_config):
    env = {**GATEWAY_ENV, "MODACLOUDS_BATCH_AUTH": "true",
           "MODACLOUDS_BATCH_WEBHOOK_PERMANENT_FAILURE_ATTEMPTS": str(PERMANENT_ATTEMPTS)}
    process = GatewayProcess(tmp_path_factory.mktemp("hooks"), condor_config, env=env).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def users(hooks_gateway):
    return {name: Client(hooks_gateway.url, _token(hooks_gateway.home, name)) for name in ("alice", "bob")}


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def submit(client: Client, url: str, name: str) -> str:
    resp = client.post("/jobs", json={"command": "true", "name": name, "notification": url})
    assert resp.status_code == 201, resp.text
    return resp.json()["job_id"]


def notification(client: Client, job_id: str) -> dict | None:
    notes = client.get(f"/jobs/{job_id}/notifications").json()
    return notes[0] if notes else None


def wait_for_notification(client: Client, job_id: str, predicate, what: str, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        note = notification(client, job_id)
        if note is not None and predicate(note):
            return note
        assert time.monotonic() < deadline, f"no {what} after {timeout}s: {note}"
        time.sleep(0.3)


def verifies(secret: str, request: dict) -> bool:
    try:
        Webhook(secret).verify(request["body"], request["headers"])
        return True
    except WebhookVerificationError:
        return False


def test_two_users_notifications_verify_only_with_their_own_secret(users, receiver):
    alice, bob = users["alice"], users["bob"]
    secrets = {name: client.get("/webhooks/secret").json()["secret"] for name, client in users.items()}
    assert secrets["alice"] != secrets["bob"] and all(s.startswith("whsec_") for s in secrets.values())
    submit(alice, f"{receiver.url}/alice", "signed-alice")
    submit(bob, f"{receiver.url}/bob", "signed-bob")
    [to_alice] = receiver.wait_for(1, path="/alice", timeout=180)
    [to_bob] = receiver.wait_for(1, path="/bob", timeout=180)
    assert verifies(secrets["alice"], to_alice) and not verifies(secrets["bob"], to_alice)
    assert verifies(secrets["bob"], to_bob) and not verifies(secrets["alice"], to_bob)
    assert alice.get("/health").json()["webhooks"]["signed"] is True


def test_after_a_rotation_both_secrets_verify_during_the_overlap(users, receiver):
    alice = users["alice"]
    old = alice.get("/webhooks/secret").json()["secret"]
    rotated = alice.post("/webhooks/secret/rotate")
    assert rotated.status_code == 200
    new = rotated.json()
    assert new["secret"] != old and parse_iso(new["previous_valid_until"]) > parse_iso(now_iso())
    assert alice.get("/webhooks/secret").json()["secret"] == new["secret"]
    submit(alice, f"{receiver.url}/rotated", "rotated")
    [request] = receiver.wait_for(1, path="/rotated", timeout=180)
    assert verifies(old, request) and verifies(new["secret"], request)
    assert not verifies(users["bob"].get("/webhooks/secret").json()["secret"], request)


def test_a_410_receiver_is_attempted_exactly_once(users, receiver):
    alice = users["alice"]
    receiver.behaviour = "gone"
    job_id = submit(alice, f"{receiver.url}/gone", "gone")
    note = wait_for_notification(alice, job_id, lambda n: n["status"] == "failed", "stopped delivery")
    assert note["attempts"] == 1 and len(receiver.requests) == 1
    assert note["stopped_reason"] == "receiver answered 410 Gone; delivery stopped"
    summary = alice.job(job_id)["notifications"]
    assert summary["counts"] == {"failed": 1} and summary["recent"][0]["last_error"] == note["stopped_reason"]


def test_a_permanent_404_stops_after_the_configured_count(users, receiver):
    alice = users["alice"]
    receiver.behaviour = "not_found"
    job_id = submit(alice, f"{receiver.url}/missing", "missing")
    note = wait_for_notification(alice, job_id, lambda n: n["status"] == "failed", "stopped delivery")
    assert note["attempts"] == PERMANENT_ATTEMPTS and len(receiver.requests) == PERMANENT_ATTEMPTS
    assert note["stopped_reason"] == "receiver answered 404 Not Found twice; delivery stopped"
    assert [a["status_code"] for a in note["attempts_log"]] == [404] * PERMANENT_ATTEMPTS


def test_a_redirected_pending_notification_arrives_at_the_new_url(users, receiver):
    alice = users["alice"]
    receiver.paths["/broken"] = "error"
    job_id = submit(alice, f"{receiver.url}/broken", "redirected")
    note = wait_for_notification(alice, job_id, lambda n: n["attempts"] >= 1, "failed attempt")
    assert note["status"] == "pending"
    view = alice.job(job_id)
    assert view["notifications"]["recent"][0]["status"] == "pending"
    assert view["links"]["notifications"] == f"/jobs/{job_id}/notifications"
    moved = alice.http.patch(f"{alice.url}/jobs/{job_id}/notifications/{note['event_id']}",
                             json={"url": f"{receiver.url}/fixed"}, timeout=30)
    assert moved.status_code == 200 and moved.json()["url"] == f"{receiver.url}/fixed"
    [request] = receiver.wait_for(1, path="/fixed", timeout=60)
    assert request["headers"]["webhook-id"] == note["event_id"]
    wait_for_notification(alice, job_id, lambda n: n["status"] == "delivered", "delivery recorded", timeout=30)
    refused = alice.http.patch(f"{alice.url}/jobs/{job_id}/notifications/{note['event_id']}",
                               json={"url": "http://169.254.169.254/latest/"}, timeout=30)
    assert refused.status_code == 400 and "metadata" in refused.json()["error"]


def test_a_cancelled_notification_is_not_sent_again(users, receiver):
    alice = users["alice"]
    receiver.paths["/failing"] = "error"
    job_id = submit(alice, f"{receiver.url}/failing", "cancelled")
    note = wait_for_notification(alice, job_id, lambda n: n["attempts"] >= 1, "failed attempt")
    cancelled = alice.post(f"/jobs/{job_id}/notifications/{note['event_id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    sent_by_then = len(receiver.requests)
    # Wait until well past the time its next attempt was due (the backoff here is at most
    # 2 s and an attempt at most 3 s), then until a later notification to the same receiver
    # went out: the worker ran meanwhile, and nothing more came.
    quiet_until = max(parse_iso(note["next_attempt_at"]), parse_iso(now_iso())) + timedelta(seconds=6)
    while parse_iso(now_iso()) < quiet_until:
        time.sleep(0.2)
    submit(alice, f"{receiver.url}/after", "after-cancel")
    receiver.wait_for(1, path="/after", timeout=180)
    failing = [r for r in receiver.requests if r["path"] == "/failing"]
    assert len(failing) <= sent_by_then + 1  # an attempt in flight at the cancel still finishes
    final = notification(alice, job_id)
    assert final["status"] == "cancelled" and final["attempts"] == len(failing)
    assert final["stopped_reason"].startswith("cancelled by alice")


def test_another_users_notification_is_404(users, receiver):
    alice, bob = users["alice"], users["bob"]
    receiver.paths["/mine"] = "error"
    job_id = submit(alice, f"{receiver.url}/mine", "not-bobs")
    note = wait_for_notification(alice, job_id, lambda n: n["attempts"] >= 1, "failed attempt")
    path = f"/jobs/{job_id}/notifications/{note['event_id']}"
    assert bob.get(path).status_code == 404
    assert bob.post(f"{path}/cancel").status_code == 404
    assert bob.http.patch(bob.url + path, json={"url": f"{receiver.url}/stolen"}, timeout=30).status_code == 404
    assert bob.get(f"/jobs/{job_id}/notifications").status_code == 404
    assert notification(alice, job_id)["status"] == "pending"
    assert alice.post(f"{path}/cancel").status_code == 200


def test_the_docs_page_runs_as_printed(hooks_gateway, tmp_path):
    out = run_page("docs/webhooks.md", hooks_gateway.client(), tmp_path)
    assert "whsec_" in out and '"status": "cancelled"' in out


def _token(home, owner) -> str:
    out = subprocess.run([sys.executable, "-m", "modaclouds_batch", "--home", str(home), "token", "create",
                          "--owner", owner, "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["token"]
