"""Seed 000 (slot leases) as a dialect, over the fake schedd and a fake pool.

Each test drives the app as a client of the seed would: lease a worker-id, use it once for a
job, an upload or a download, and pause, resume or terminate it through modify.
"""

import json
import threading
import time
import uuid
from pathlib import Path

import falcon.testing
import pytest

from modaclouds_batch.dialects import slots
from modaclouds_batch.jobs.states import JobState
from modaclouds_batch.store import Store
from modaclouds_batch.timefmt import parse_iso

from tests.polling import until

from .fakes import FakeCondor, tracker_without_sweeps, use_condor
from .test_dialect_001_002 import World as SharedWorld
from .test_infra import FakePool

BASE = "/slots"
UNKNOWN = "0f2d3b57-9f53-4b8e-9e5a-2b8f0d2c9e11"


class ActingCondor(FakeCondor):
    """A fake schedd that suspends and continues jobs at once, as HTCondor does in a moment."""

    def act(self, action, constraint, reason=None):
        result = super().act(action, constraint, reason)
        for ad in self._select(self.queue, constraint):
            if action == "suspend":
                self.queue[ad["GatewayJobId"]]["JobStatus"] = 7
            elif action == "continue":
                self.queue[ad["GatewayJobId"]]["JobStatus"] = 2
        return result


class World(SharedWorld):
    """The dialect tests' world, with a pool of one worker with 2 free CPUs."""

    def __init__(self, home: Path, **settings):
        super().__init__(home, **settings)
        self.condor = use_condor(self.gateway, ActingCondor())
        self.tracker = tracker_without_sweeps(self.gateway)
        self.pool = FakePool("localhost")
        self.gateway.infra.collector = self.pool
        self.gateway.infra.cache_seconds = 0

    def lease(self) -> str:
        resp = self.http.simulate_get(f"{BASE}/new_job/")
        assert resp.status_code == 200, resp.text
        return resp.json["worker-id"]

    def status(self, worker_id: str):
        return self.http.simulate_get(f"{BASE}/status/{worker_id}")

    def modify(self, worker_id: str, status: str):
        return self.http.simulate_post(f"{BASE}/modify/{worker_id}/{status}")

    def start_job(self, worker_id: str, body: dict | None = None, **params):
        return self.http.simulate_post(f"{BASE}/job/new/{worker_id}", json=body or {"command": "sleep 60"},
                                       params={"wait": "false", **params})


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.close()


def small_world(tmp_path, **settings) -> World:
    return World(tmp_path / "small", **settings)


def eventually(check, timeout: float = 30.0, what: str = "condition"):
    return until(check, timeout, what, every=0.02)


class Background(threading.Thread):
    """A thread whose failure fails the test (join re-raises it)."""

    def __init__(self, target):
        super().__init__(daemon=True)
        self.work, self.error, self.result = target, None, None
        self.start()

    def run(self):
        try:
            self.result = self.work()
        except BaseException as exc:  # handed to join
            self.error = exc

    def join(self, timeout: float = 60.0):
        super().join(timeout)
        assert not self.is_alive(), "the background work did not end"
        if self.error:
            raise self.error
        return self.result


# --- the seam ------------------------------------------------------------------------------

def test_the_table_maps_every_core_state_to_one_of_the_seeds_words():
    assert set(slots.STATES) == set(JobState)
    assert set(slots.STATES.values()) == {"Not Running", "Running", "Paused", "Completed", "Terminated"}
    assert slots.DIALECT.states is slots.STATES


def test_the_index_lists_seed_000(world):
    apis = world.http.simulate_get("/").json["apis"]
    assert {"name": "Slot leases", "seed": "000", "base": BASE, "docs": "docs/dialect-000-slots.md"} in apis


# --- leases ------------------------------------------------------------------------------------

def test_new_job_leases_a_worker_id_that_expires_after_the_setting(world):
    resp = world.http.simulate_get(f"{BASE}/new_job/")
    assert resp.status_code == 200, resp.text
    worker_id = resp.json["worker-id"]
    assert set(resp.json) == {"worker-id", "expires_at"} and uuid.UUID(worker_id).version == 4
    lease = world.store.get_lease(worker_id)
    assert lease["expires_at"] == resp.json["expires_at"]
    assert (parse_iso(lease["expires_at"]) - parse_iso(lease["created_at"])).total_seconds() == 300
    assert resp.headers["location"] == f"{BASE}/status/{worker_id}"
    status = world.status(worker_id)
    assert status.status_code == 200
    assert status.json["status"] == "Not Running" and status.json["expires_at"] == resp.json["expires_at"]


def test_past_max_leased_slots_new_job_is_503_with_retry_after(tmp_path):
    w = small_world(tmp_path, max_leased_slots=1)
    try:
        w.lease()
        resp = w.http.simulate_get(f"{BASE}/new_job/")
        assert resp.status_code == 503 and resp.headers["retry-after"]
        assert resp.json["limit"] == "max_leased_slots" and "max_leased_slots" in resp.json["error"]
    finally:
        w.store.close()


def test_leases_never_outnumber_the_pools_free_slots(world):
    world.lease(), world.lease()  # the worker has 2 free CPUs
    resp = world.http.simulate_get(f"{BASE}/new_job/")
    assert resp.status_code == 503 and resp.json["limit"] == "pool" and resp.headers["retry-after"]


def test_a_leased_job_still_queued_keeps_its_slot_reserved(world):
    world.start_job(world.lease())  # idle: the pool has not given it a CPU yet
    world.lease()  # the second of the worker's 2 free CPUs
    resp = world.http.simulate_get(f"{BASE}/new_job/")
    assert resp.status_code == 503 and resp.json["limit"] == "pool"


def test_an_expired_lease_frees_its_slot_by_itself_and_is_400(tmp_path):
    w = small_world(tmp_path, max_leased_slots=1, slot_lease_seconds=0.2)
    try:
        worker_id = w.lease()
        eventually(lambda: w.http.simulate_get(f"{BASE}/new_job/").status_code == 200, what="the slot freed")
        for resp in (w.status(worker_id), w.start_job(worker_id)):
            assert resp.status_code == 400 and "expired" in resp.json["error"]
    finally:
        w.store.close()


@pytest.mark.parametrize("worker_id, words", [(UNKNOWN, "no lease"), ("nope", "not a worker-id")])
def test_an_unknown_or_malformed_worker_id_is_400_on_every_route(world, worker_id, words):
    for resp in (world.status(worker_id), world.start_job(worker_id), world.modify(worker_id, "Paused"),
                 world.http.simulate_post(f"{BASE}/upload/new/{worker_id}", body=b"x"),
                 world.http.simulate_post(f"{BASE}/download/new/{worker_id}", json={"data_id": UNKNOWN})):
        assert resp.status_code == 400 and words in resp.json["error"], resp.text


def test_leases_survive_a_restart(tmp_path):
    w = World(tmp_path)
    worker_id = w.lease()
    w.store.close()
    again = World(tmp_path)
    try:
        assert again.status(worker_id).json["status"] == "Not Running"
        assert again.start_job(worker_id).status_code == 202
    finally:
        again.store.close()


# --- jobs ------------------------------------------------------------------------------------------

def test_a_job_answer_waits_for_the_end_and_gives_the_final_state(world):
    worker_id = world.lease()

    def finish_once_queued():
        lease = eventually(lambda: (world.store.get_lease(worker_id) or {}).get("job_id") and
                           world.store.get_lease(worker_id))
        world.set_status(lease["job_id"], 2)
        world.finish(lease["job_id"], exit_code=0)

    finisher = Background(finish_once_queued)
    resp = world.http.simulate_post(f"{BASE}/job/new/{worker_id}", json={"command": "echo hi"})
    finisher.join()
    assert resp.status_code == 200, resp.text
    assert resp.text.startswith("\n")  # whitespace (a keep-alive) before the JSON
    final = json.loads(resp.text)
    assert final["status"] == "Completed" and final["exit_status"] == 0 and final["state"] == "completed"
    assert final["job_id"] == resp.headers["x-job-id"] and final["links"]["job"] == f"/jobs/{final['job_id']}"
    assert world.store.get_job(final["job_id"])["kind"] == "command"


def test_a_worker_id_is_single_use(world):
    worker_id = world.lease()
    assert world.start_job(worker_id).status_code == 202
    for resp in (world.start_job(worker_id), world.http.simulate_post(f"{BASE}/upload/new/{worker_id}", body=b"x")):
        assert resp.status_code == 400 and "already used" in resp.json["error"]


def test_a_refused_job_body_leaves_nothing_and_keeps_the_lease_usable(world):
    worker_id = world.lease()
    resp = world.start_job(worker_id, {"command": "echo", "comand": "x"})
    assert resp.status_code == 400 and resp.json["field"] == "comand"
    assert world.nothing_left()
    assert world.start_job(worker_id).status_code == 202


def test_an_array_is_refused(world):
    resp = world.start_job(world.lease(), {"command": "echo", "count": 2})
    assert resp.status_code == 400 and "one job" in resp.json["error"]


def test_a_lease_whose_slot_was_lost_is_503_and_stays_usable(world):
    worker_id = world.lease()
    world.pool.startds["localhost"] = True  # drained: no free CPU any more
    world.pool.publish()
    resp = world.start_job(worker_id)
    assert resp.status_code == 503 and "was lost" in resp.json["error"] and resp.headers["retry-after"]
    assert world.nothing_left()
    world.pool.startds["localhost"] = False
    world.pool.publish()
    assert world.start_job(worker_id).status_code == 202


def test_modify_pauses_resumes_and_terminates_the_job_through_htcondor(world, monkeypatch):
    worker_id = world.lease()
    job_id = world.start_job(worker_id).json["job_id"]
    world.set_status(job_id, 2)
    assert world.status(worker_id).json["status"] == "Running"
    paused = world.modify(worker_id, "Paused")
    assert paused.status_code == 200 and paused.json["status"] == "Paused", paused.text
    assert any(name == "suspend" for name, _ in world.condor.calls)
    assert world.modify(worker_id, "Paused").status_code == 400  # the same status
    resumed = world.modify(worker_id, "Running")
    assert resumed.status_code == 200 and resumed.json["status"] == "Running"
    assert any(name == "continue" for name, _ in world.condor.calls)
    monkeypatch.setattr(slots, "MODIFY_WAIT_SECONDS", 0)
    assert world.modify(worker_id, "Terminated").status_code == 200
    assert job_id not in world.condor.queue  # removed from the schedd
    world.tracker.run_cycle()
    assert world.status(worker_id).json["status"] == "Terminated"
    resp = world.modify(worker_id, "Running")
    assert resp.status_code == 400 and "already removed" in resp.json["error"]


@pytest.mark.parametrize("status, words", [("Completed", "read-only"), ("Not Running", "read-only"),
                                           ("Done", "unknown status")])
def test_modify_to_a_read_only_or_unknown_status_is_400(world, status, words):
    resp = world.modify(world.lease(), status)
    assert resp.status_code == 400 and words in resp.json["error"]


def test_an_idle_job_cannot_be_paused_but_can_be_terminated(world):
    worker_id = world.lease()
    world.start_job(worker_id)
    resp = world.modify(worker_id, "Paused")
    assert resp.status_code == 400 and "cannot suspend a job that is idle" in resp.json["error"]


def test_terminating_an_unused_lease_gives_its_slot_back(tmp_path):
    w = small_world(tmp_path, max_leased_slots=1)
    try:
        worker_id = w.lease()
        resp = w.modify(worker_id, "Terminated")
        assert resp.status_code == 200 and resp.json["status"] == "Terminated"
        actions = [e["action"] for e in w.store.audit_entries(None, None, None, 10, None) if e["target"] == worker_id]
        assert set(actions) == {"slot.lease", "slot.release"}
        assert w.http.simulate_get(f"{BASE}/new_job/").status_code == 200
        assert w.start_job(worker_id).status_code == 400
    finally:
        w.store.close()


# --- transfers -------------------------------------------------------------------------------------

def data_objects(world) -> list:
    return world.http.simulate_get("/data").json


def test_an_upload_becomes_a_data_object_once_complete(world):
    worker_id = world.lease()
    resp = world.http.simulate_post(f"{BASE}/upload/new/{worker_id}", body=b"hello slots",
                                    params={"filename": "hello.txt"},
                                    headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 200, resp.text
    assert resp.json["status"] == "Completed" and resp.json["bytes"] == 11
    assert world.http.simulate_get(resp.json["data"]).text == "hello slots"
    assert world.status(worker_id).json["data_id"] == resp.json["data_id"]


@pytest.mark.parametrize("body, content_type, status", [
    (b"--x\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nv\r\n--x--\r\n",
     "multipart/form-data; boundary=x", 400),
    (b"x" * 2048, "application/octet-stream", 413),
])
def test_a_refused_upload_keeps_nothing_and_gives_the_lease_back(tmp_path, body, content_type, status):
    w = small_world(tmp_path, max_upload_bytes=1024)
    try:
        worker_id = w.lease()
        resp = w.http.simulate_post(f"{BASE}/upload/new/{worker_id}", body=body, headers={"Content-Type": content_type})
        assert resp.status_code == status, resp.text
        assert data_objects(w) == [] and w.status(worker_id).json["status"] == "Not Running"
        assert w.http.simulate_post(f"{BASE}/upload/new/{worker_id}", body=b"ok").json["status"] == "Completed"
    finally:
        w.store.close()


def paced_world(tmp_path) -> World:
    return small_world(tmp_path, slot_transfer_bytes_per_second=64 * 1024)


def upload_in_background(world, worker_id, content: bytes) -> dict:
    answer: dict = {}

    def send():
        answer["resp"] = world.http.simulate_post(f"{BASE}/upload/new/{worker_id}", body=content,
                                                  headers={"Content-Type": "application/octet-stream"})
    thread = threading.Thread(target=send)
    thread.start()
    answer["thread"] = thread
    return answer


def test_a_paused_upload_stops_reading_until_resumed_and_ends_with_the_right_bytes(tmp_path):
    w = paced_world(tmp_path)
    try:
        content = bytes(range(256)) * 1024  # 256 KiB: 4 s at 64 KiB/s
        worker_id = w.lease()
        upload = upload_in_background(w, worker_id, content)
        eventually(lambda: w.status(worker_id).json.get("bytes"), what="bytes moving")
        paused = w.modify(worker_id, "Paused")
        assert paused.status_code == 200 and paused.json["status"] == "Paused"
        held = w.status(worker_id).json["bytes"]
        time.sleep(1.5)  # at 64 KiB/s a running upload would move on by a chunk or more
        assert w.status(worker_id).json == {**w.status(worker_id).json, "status": "Paused", "bytes": held}
        assert w.modify(worker_id, "Running").json["status"] == "Running"
        upload["thread"].join(60)
        resp = upload["resp"]
        assert resp.status_code == 200 and resp.json["status"] == "Completed", resp.text
        assert w.http.simulate_get(resp.json["data"]).content == content
    finally:
        w.store.close()


def test_a_terminated_upload_keeps_nothing(tmp_path):
    w = paced_world(tmp_path)
    try:
        worker_id = w.lease()
        upload = upload_in_background(w, worker_id, b"x" * (256 * 1024))
        eventually(lambda: w.status(worker_id).json.get("bytes"), what="bytes moving")
        assert w.modify(worker_id, "Terminated").json["status"] == "Terminated"
        upload["thread"].join(60)
        resp = upload["resp"]
        assert resp.status_code == 200 and resp.json["status"] == "Terminated" and "data_id" not in resp.json
        assert data_objects(w) == []
        assert not list((Path(w.gateway.settings.home) / "data").glob(".incoming-*"))
    finally:
        w.store.close()


def test_a_download_sends_a_data_object_and_is_completed(world):
    data_id = world.http.simulate_post("/data", body=b"payload", params={"filename": "p.bin"},
                                       headers={"Content-Type": "application/octet-stream"}).json["id"]
    worker_id = world.lease()
    resp = world.http.simulate_post(f"{BASE}/download/new/{worker_id}", json={"data_id": data_id})
    assert resp.status_code == 200, resp.text
    assert resp.content == b"payload" and resp.headers["x-data-size"] == "7"
    status = world.status(worker_id).json
    assert status["status"] == "Completed" and status["bytes"] == 7 and status["kind"] == "download"


def test_a_job_output_can_be_downloaded_by_name(world):
    job_id = world.start_job(world.lease(), {"command": "echo hi"}).json["job_id"]
    world.finish(job_id, stdout="hi\n")
    resp = world.http.simulate_post(f"{BASE}/download/new/{world.lease()}",
                                    json={"job_id": job_id, "artifact": "stdout"})
    assert resp.status_code == 200 and resp.text == "hi\n"


@pytest.mark.parametrize("body, field", [({}, "data_id"), ({"data_id": UNKNOWN}, "data_id"),
                                         ({"data_id": 3}, "data_id"), ({"file": "x"}, "file"),
                                         ({"job_id": UNKNOWN, "artifact": "core"}, "artifact")])
def test_a_bad_download_body_is_refused_and_keeps_the_lease(world, body, field):
    worker_id = world.lease()
    resp = world.http.simulate_post(f"{BASE}/download/new/{worker_id}", json=body)
    assert resp.status_code == 400 and resp.json["field"] == field, resp.text
    assert world.status(worker_id).json["status"] == "Not Running"


def test_a_terminated_download_ends_short_and_says_terminated(tmp_path):
    w = paced_world(tmp_path)
    try:
        data_id = w.http.simulate_post("/data", body=b"y" * (256 * 1024),
                                       headers={"Content-Type": "application/octet-stream"}).json["id"]
        worker_id = w.lease()
        answer = {}
        thread = threading.Thread(target=lambda: answer.update(resp=w.http.simulate_post(
            f"{BASE}/download/new/{worker_id}", json={"data_id": data_id})))
        thread.start()
        eventually(lambda: w.status(worker_id).json.get("bytes"), what="bytes moving")
        assert w.modify(worker_id, "Terminated").status_code == 200
        thread.join(60)
        assert answer["resp"].status_code == 200 and len(answer["resp"].content) < 256 * 1024
        status = w.status(worker_id).json
        assert status["status"] == "Terminated" and status["bytes"] == len(answer["resp"].content)
    finally:
        w.store.close()


# --- isolation and restarts --------------------------------------------------------------------------

def test_another_users_worker_id_is_400_like_an_unknown_one(tmp_path):
    from modaclouds_batch.app import wsgi_app

    w = World(tmp_path, auth=True)
    try:
        app = wsgi_app(w.gateway)

        def client(user):
            token, _ = w.gateway.tokens.create(user, "user", label="unit tests")
            return falcon.testing.TestClient(app, headers={"Authorization": f"Bearer {token}",
                                                           "Host": "localhost:5000"})
        alice, bob = client("alice"), client("bob")
        worker_id = alice.simulate_get(f"{BASE}/new_job/").json["worker-id"]
        mine = bob.simulate_get(f"{BASE}/status/{UNKNOWN}")
        theirs = bob.simulate_get(f"{BASE}/status/{worker_id}")
        assert theirs.status_code == mine.status_code == 400
        assert theirs.json["error"] == mine.json["error"].replace(UNKNOWN, worker_id)
        assert bob.simulate_post(f"{BASE}/job/new/{worker_id}", json={"command": "true"}).status_code == 400
        assert bob.simulate_post(f"{BASE}/modify/{worker_id}/Terminated").status_code == 400
        assert alice.simulate_get(f"{BASE}/status/{worker_id}").json["status"] == "Not Running"
    finally:
        w.store.close()


def test_start_up_ends_transfers_a_stopped_gateway_was_carrying(tmp_path):
    store = Store(tmp_path / "gateway.db")
    try:
        now = "2026-01-01T00:00:00.000000Z"
        store.grant_lease({"worker_id": UNKNOWN, "owner": "alice", "created_at": now,
                           "expires_at": "2099-01-01T00:00:00.000000Z"}, [], [], lambda usage: None)
        assert store.claim_lease(UNKNOWN, "alice", "upload", now, "running")
        assert store.lease_usage(now, ["running"], ["idle"])["active"] == 1
        assert store.end_unfinished_slot_work(now) == 1
        lease = store.get_lease(UNKNOWN)
        assert lease["status"] == "removed" and "stopped" in lease["reason"]
        assert store.lease_usage(now, ["running"], ["idle"])["active"] == 0
    finally:
        store.close()


def test_a_job_retried_with_its_idempotency_key_reattaches_instead_of_reusing_the_lease(world):
    """The lease is single-use, so a retry after a lost answer would be refused: with an
    Idempotency-Key it gets the first request's job, and the schedd sees one submission."""
    worker_id = world.lease()
    key = {"Idempotency-Key": "slot-job-1"}
    first = world.http.simulate_post(f"{BASE}/job/new/{worker_id}", json={"command": "sleep 60"},
                                     params={"wait": "false"}, headers=key)
    assert first.status_code == 202, first.text
    again = world.http.simulate_post(f"{BASE}/job/new/{worker_id}", json={"command": "sleep 60"},
                                     params={"wait": "false"}, headers=key)
    assert again.status_code == 202 and again.headers["x-job-id"] == first.headers["x-job-id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert world.store.count_jobs() == 1 and world.condor.clusters == 1
    # A streamed answer is never kept, so its retry goes through the route and reattaches.
    worker_id = world.lease()
    key = {"Idempotency-Key": "slot-job-2"}

    def finish_once_queued():
        lease = eventually(lambda: (world.store.get_lease(worker_id) or {}).get("job_id") and
                           world.store.get_lease(worker_id))
        world.set_status(lease["job_id"], 2)
        world.finish(lease["job_id"], exit_code=0)

    finisher = Background(finish_once_queued)
    streamed = world.http.simulate_post(f"{BASE}/job/new/{worker_id}", json={"command": "echo hi"}, headers=key)
    finisher.join()
    retried = world.http.simulate_post(f"{BASE}/job/new/{worker_id}", json={"command": "echo hi"}, headers=key)
    assert streamed.status_code == retried.status_code == 200, retried.text
    assert json.loads(retried.text) == json.loads(streamed.text)
    assert json.loads(retried.text)["status"] == "Completed"
    assert world.store.count_jobs() == 2 and world.condor.clusters == 2
