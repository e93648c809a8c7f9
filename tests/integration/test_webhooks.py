"""Completion webhooks on the real pool: one per job, after outputs, signed, never lost."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from standardwebhooks import Webhook

from modaclouds_batch.timefmt import parse_iso

from ..receiver import Receiver
from .fixtures import GATEWAY_ENV as FAST_RETRIES
from .fixtures import WEBHOOK_SECRET
from .gateway import Client, GatewayProcess, free_port, pack_bundle

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_each_finished_job_notifies_once_after_outputs_with_a_valid_signature(client, receiver):
    ids = {
        client.submit(pack_bundle("hello"), name="notify-ok", notify=f"{receiver.url}/ok").json()["job_id"]: 0,
        client.submit(pack_bundle("fail"), name="notify-fail", notify=f"{receiver.url}/ok").json()["job_id"]: 3,
    }
    requests_ = receiver.wait_for(2, timeout=180)
    verifier = Webhook(WEBHOOK_SECRET)
    seen = {}
    for request in requests_:
        payload = verifier.verify(request["body"], request["headers"])
        assert request["headers"]["webhook-id"] == payload["event_id"]
        seen[payload["job-uuid"]] = payload
    assert set(seen) == set(ids)
    for job_id, retcode in ids.items():
        payload = seen[job_id]
        assert payload["retcode"] == retcode
        assert payload["job_status"] == ("completed" if retcode == 0 else "failed")
        assert payload["final"] is True and payload["backend_id"] > 0
        # outputs are downloadable by the time the receiver hears about the job
        stdout = client.http.get(payload["links"]["artifacts"]["stdout"], timeout=10)
        assert stdout.status_code == 200
    time.sleep(3)
    assert len(receiver.requests) == 2  # exactly one notification per job
    notes = client.get(f"/jobs/{next(iter(ids))}/notifications").json()
    assert notes[0]["status"] == "delivered" and notes[0]["attempts_log"][0]["status_code"] == 204


def test_receiver_down_then_up_still_gets_it_even_across_a_gateway_kill(tmp_path, condor_config):
    gateway = GatewayProcess(tmp_path / "home", condor_config, env=FAST_RETRIES).start()
    client = gateway.client()
    port = free_port()
    try:
        job_id = client.submit(pack_bundle("hello"), name="late-receiver",
                               notify=f"http://127.0.0.1:{port}/hook").json()["job_id"]
        client.wait_for(job_id, {"completed"}, timeout=180)
        client.wait_until(job_id, lambda job: _attempts(client, job_id) >= 1, what="a failed delivery attempt")
        gateway.kill()  # the job has ended, its notification is not delivered yet
        receiver = Receiver(port)
        try:
            gateway.start()
            [request] = receiver.wait_for(1, timeout=60)
            assert Webhook(WEBHOOK_SECRET).verify(request["body"], request["headers"])["job-uuid"] == job_id
            # The receiver has the request; the gateway records it once the answer is back.
            after = gateway.client()
            deadline = time.monotonic() + 15
            while (note := after.get(f"/jobs/{job_id}/notifications").json()[0])["status"] != "delivered":
                assert time.monotonic() < deadline, note
                time.sleep(0.2)
            assert note["attempts_log"][0]["status_code"] is None and note["attempts_log"][0]["error"]
        finally:
            receiver.close()
    finally:
        gateway.stop()


def test_a_hanging_or_failing_receiver_does_not_delay_other_jobs(client, receiver):
    receiver.hang_seconds = 3600
    receiver.paths["/hang"] = "slow"
    receiver.paths["/broken"] = "error"
    hanging = client.submit(pack_bundle("hello"), name="hang", notify=f"{receiver.url}/hang").json()["job_id"]
    broken = client.submit(pack_bundle("hello"), name="broken", notify=f"{receiver.url}/broken").json()["job_id"]
    healthy = client.submit(pack_bundle("hello"), name="healthy", notify=f"{receiver.url}/fine").json()["job_id"]
    for job_id in (hanging, broken, healthy):
        client.wait_for(job_id, "completed", timeout=180)
    receiver.wait_for(1, path="/fine", timeout=30)
    attempts = client.wait_until(
        broken, lambda job: _attempts(client, broken) >= 2, timeout=60, what="two failed attempts")
    log = client.get(f"/jobs/{broken}/notifications").json()[0]["attempts_log"]
    assert [a["status_code"] for a in log][:2] == [500, 500]
    assert attempts["job_status"] == "completed"


def test_admin_can_resend_a_notification(client, receiver):
    job_id = client.submit(pack_bundle("hello"), name="resend", notify=f"{receiver.url}/again").json()["job_id"]
    client.wait_for(job_id, "completed", timeout=180)
    receiver.wait_for(1, path="/again", timeout=30)
    event_id = client.get(f"/jobs/{job_id}/notifications").json()[0]["event_id"]
    assert client.post(f"/jobs/{job_id}/notifications/{event_id}/resend").status_code == 202
    second = receiver.wait_for(2, path="/again", timeout=30)
    assert {r["headers"]["webhook-id"] for r in second} == {event_id}
    assert client.post(f"/jobs/{job_id}/notifications/msg_nope/resend").status_code == 404


def _status(client, job_id) -> str | None:
    notes = client.get(f"/jobs/{job_id}/notifications").json()
    return notes[0]["status"] if notes else None


def _attempts(client, job_id) -> int:
    notes = client.get(f"/jobs/{job_id}/notifications").json()
    return notes[0]["attempts"] if notes else 0



def test_a_trickling_receiver_is_cut_at_the_deadline_and_others_arrive_on_time(tmp_path, condor_config):
    # A gateway of its own (the trickling notifications keep retrying until it stops), with
    # tokens, so that the two tenants are two users.
    home = tmp_path / "home"
    gateway = GatewayProcess(home, condor_config, env={**FAST_RETRIES, "MODACLOUDS_BATCH_AUTH": "true"}).start()
    mallory, bob = (Client(gateway.url, _token(home, name)) for name in ("mallory", "bob"))
    # Mallory's receivers, under two host names, answer one byte every 2 s: each read is
    # quick, the answer never ends.
    slow = [Receiver(host="127.0.0.2"), Receiver(host="127.0.0.3")]
    fast = Receiver()
    for receiver in slow:
        receiver.behaviour, receiver.trickle_seconds = "trickle", 2.0
    try:
        trickled = [mallory.submit(pack_bundle("hello"), name=f"trickle-{i}",
                                   notify=f"{slow[i % 2].url}/t{i}").json()["job_id"] for i in range(6)]
        for job_id in trickled:
            mallory.wait_for(job_id, "completed", timeout=180)
        mallory.wait_until(trickled[0], lambda job: _attempts(mallory, trickled[0]) >= 1, what="a first attempt")
        # Bob's receiver, while Mallory's six keep retrying.
        on_time = bob.submit(pack_bundle("hello"), name="on-time",
                             notify=f"http://localhost:{fast.port}/fine").json()["job_id"]
        fast.wait_for(1, path="/fine", timeout=180)
        bob.wait_until(on_time, lambda job: _status(bob, on_time) == "delivered", what="delivery recorded")
        note = bob.get(f"/jobs/{on_time}/notifications").json()[0]
        waited = (parse_iso(note["attempts_log"][0]["at"]) - parse_iso(note["created_at"])).total_seconds()
        assert note["attempts"] == 1 and waited < 1.5, note
        cut = mallory.get(f"/jobs/{trickled[0]}/notifications").json()[0]["attempts_log"][0]
        assert "deadline" in cut["error"] and 2500 <= cut["duration_ms"] <= 4500, cut  # webhook_timeout is 3 s
    finally:
        gateway.stop()
        for receiver in (*slow, fast):
            receiver.close()


def _token(home, owner) -> str:
    out = subprocess.run([sys.executable, "-m", "modaclouds_batch", "--home", str(home), "token", "create",
                          "--owner", owner, "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["token"]


def test_a_finished_job_is_noticed_from_the_schedds_event_log_not_from_the_next_poll(tmp_path, condor_config,
                                                                                     receiver):
    # The tracker polls once an hour here: after the submission's own wake-up, only the schedd's
    # event log (which the pool's client config names) can tell it the job started and ended.
    env = {**FAST_RETRIES, "MODACLOUDS_BATCH_TRACKER_INTERVAL": "3600"}
    gateway = GatewayProcess(tmp_path / "home", condor_config, env=env).start()
    try:
        client = gateway.client()
        job_id = client.submit(pack_bundle("hello"), name="evented",
                               notify=f"{receiver.url}/hook").json()["job_id"]
        client.wait_for(job_id, {"completed"}, timeout=180)
        [request] = receiver.wait_for(1, timeout=60)
        assert json.loads(request["body"])["job-uuid"] == job_id
    finally:
        gateway.stop()
