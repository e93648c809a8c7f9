"""Seed 000 (slot leases) through HTTP on the real pool: lease, job answered at its end,
modify seen by HTCondor, 503 when every slot is leased, pausable uploads, restarts."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import requests

from tests import polling

from .docs_examples import run_page
from .fixtures import GATEWAY_ENV
from .gateway import Client, GatewayProcess, pack_bundle

pytestmark = pytest.mark.integration

BASE = "/slots"
RUNNING, SUSPENDED = 2, 7
PACE = 64 * 1024  # bytes per second of the small gateway's transfers


@pytest.fixture(scope="module")
def small(tmp_path_factory, condor_config):
    """A gateway of our own: one leased slot at most, 20 s leases, transfers paced at 64 KiB/s."""
    process = GatewayProcess(
        tmp_path_factory.mktemp("slots-small"), condor_config,
        env={**GATEWAY_ENV, "MODACLOUDS_BATCH_MAX_LEASED_SLOTS": "1", "MODACLOUDS_BATCH_SLOT_LEASE_SECONDS": "20",
             "MODACLOUDS_BATCH_SLOT_TRANSFER_BYTES_PER_SECOND": str(PACE)},
    ).start()
    yield process
    process.stop()


def lease(client: Client) -> str:
    resp = client.get(f"{BASE}/new_job/")
    assert resp.status_code == 200, resp.text
    assert set(resp.json()) == {"worker-id", "expires_at"}
    return resp.json()["worker-id"]


def status(client: Client, worker_id: str) -> dict:
    resp = client.get(f"{BASE}/status/{worker_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def modify(client: Client, worker_id: str, new_status: str) -> requests.Response:
    return client.post(f"{BASE}/modify/{worker_id}/{new_status}")


def until(check, timeout: float = 180.0, what: str = "condition"):
    return polling.until(check, timeout, what, every=0.3)


def in_background(work):
    """Run ``work`` in a thread; the returned function joins it and gives its result (or raises)."""
    box: dict = {}

    def run():
        try:
            box["result"] = work()
        except BaseException as exc:  # re-raised by the join below
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout: float = 180.0):
        thread.join(timeout)
        assert not thread.is_alive(), "the background request did not end"
        if "error" in box:
            raise box["error"]
        return box["result"]
    return join


# --- jobs on the shared gateway -----------------------------------------------------------------

def test_a_lease_runs_a_bundle_and_the_answer_is_its_final_state(client):
    worker_id = lease(client)
    resp = client.http.post(client.url + f"{BASE}/job/new/{worker_id}", timeout=300,
                            files={"job-bundle": ("hello.tar.gz", pack_bundle("hello"), "application/gzip")},
                            data={"job-name": "slots-hello", "job-arguments": "one two"})
    assert resp.status_code == 200, resp.text
    final = json.loads(resp.text)  # keep-alive newlines, then the final status
    assert final["status"] == "Completed" and final["state"] == "completed" and final["exit_status"] == 0, final
    job_id = final["job_id"]
    assert resp.headers["X-Job-Id"] == job_id and resp.headers["Location"] == f"{BASE}/status/{worker_id}"
    assert "hello from" in client.get(final["links"]["stdout"]).text
    assert client.job(job_id)["job_status"] == "completed"  # the main API's job
    assert status(client, worker_id)["status"] == "Completed"
    again = client.post(f"{BASE}/job/new/{worker_id}", json={"command": "true"})
    assert again.status_code == 400 and "already used" in again.json()["error"]


def wait_until_executing(schedd, job_id: str, timeout: float = 180.0) -> dict:
    """Until the job's process runs on the worker (JobCurrentStartExecutingDate), not merely
    JobStatus 2: a suspend sent before reaches a claim with no job yet (see test_pool)."""
    def executing():
        ads = schedd.query(f'GatewayJobId == "{job_id}"', ["JobStatus", "JobCurrentStartExecutingDate"])
        return ads[0] if ads and ads[0]["JobStatus"] == RUNNING and ads[0].get("JobCurrentStartExecutingDate") else None
    return until(executing, timeout, f"job {job_id} executing")


def condor_status(schedd, job_id: str) -> int | None:
    ads = schedd.query(f'GatewayJobId == "{job_id}"', ["JobStatus"])
    return ads[0]["JobStatus"] if ads else None


@pytest.mark.timeout(900)
def test_modify_pauses_and_resumes_the_job_in_htcondor_then_terminates_it(client, schedd):
    worker_id = lease(client)
    resp = client.post(f"{BASE}/job/new/{worker_id}", params={"wait": "false"}, json={"command": "sleep 300"})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    wait_until_executing(schedd, job_id)
    assert modify(client, worker_id, "Running").status_code == 400  # it runs already

    paused = modify(client, worker_id, "Paused")
    assert paused.status_code == 200 and paused.json()["status"] == "Paused", paused.text
    until(lambda: condor_status(schedd, job_id) == SUSPENDED, what="HTCondor suspended it")
    again = modify(client, worker_id, "Paused")
    assert again.status_code == 400 and "suspend" in again.json()["error"]

    resumed = modify(client, worker_id, "Running")
    assert resumed.status_code == 200 and resumed.json()["status"] == "Running", resumed.text
    until(lambda: condor_status(schedd, job_id) == RUNNING, what="HTCondor continued it")

    terminated = modify(client, worker_id, "Terminated")
    assert terminated.status_code == 200 and terminated.json()["status"] == "Terminated", terminated.text
    assert condor_status(schedd, job_id) in (None, 3)  # removed
    assert status(client, worker_id)["status"] == "Terminated"
    assert client.job(job_id)["job_status"] == "removed"
    late = modify(client, worker_id, "Running")
    assert late.status_code == 400 and "already removed" in late.json()["error"]


def test_a_waiting_answer_ends_terminated_when_another_request_terminates_the_job(client, schedd):
    worker_id = lease(client)
    join = in_background(lambda: client.http.post(client.url + f"{BASE}/job/new/{worker_id}",
                                                  json={"command": "sleep 300"}, timeout=300))
    job_id = until(lambda: status(client, worker_id).get("job_id"), what="the job submitted")
    until(lambda: condor_status(schedd, job_id) is not None, what="the job queued")
    assert modify(client, worker_id, "Terminated").status_code == 200
    resp = join()
    assert resp.status_code == 200 and json.loads(resp.text)["status"] == "Terminated", resp.text


def test_a_download_through_a_lease_sends_the_data_object(client):
    content = os.urandom(100_000)
    data_id = client.post("/data", data=content, params={"filename": "blob.bin"},
                          headers={"Content-Type": "application/octet-stream"}).json()["id"]
    worker_id = lease(client)
    resp = client.post(f"{BASE}/download/new/{worker_id}", json={"data_id": data_id})
    assert resp.status_code == 200 and resp.content == content
    assert resp.headers["X-Data-Size"] == str(len(content))
    assert status(client, worker_id)["status"] == "Completed"


def test_bad_worker_ids_are_400(client):
    for path in (f"{BASE}/status/nope", f"{BASE}/status/0f2d3b57-9f53-4b8e-9e5a-2b8f0d2c9e11"):
        resp = client.get(path)
        assert resp.status_code == 400 and "error" in resp.json()
    resp = client.post(f"{BASE}/modify/{lease(client)}/Completed")
    assert resp.status_code == 400 and "read-only" in resp.json()["error"]


def test_the_docs_page_runs_as_printed(client, tmp_path):
    out = run_page("docs/dialect-000-slots.md", client, tmp_path)
    assert "42\n" in out and "slot data\n" in out


# --- a gateway of our own: one slot, short leases, paced transfers -------------------------------

def test_503_when_every_slot_is_leased_until_one_is_given_back(small):
    client = small.client()
    worker_id = lease(client)
    full = client.get(f"{BASE}/new_job/")
    assert full.status_code == 503 and full.headers["Retry-After"], full.text
    assert full.json()["limit"] == "max_leased_slots"
    assert modify(client, worker_id, "Terminated").json()["status"] == "Terminated"
    assert modify(client, lease(client), "Terminated").status_code == 200


def test_an_expired_worker_id_is_400_and_its_slot_is_free_again(small):
    client = small.client()
    worker_id = lease(client)
    until(lambda: client.get(f"{BASE}/status/{worker_id}").status_code == 400, timeout=60, what="the lease expired")
    resp = client.post(f"{BASE}/job/new/{worker_id}", json={"command": "true"})
    assert resp.status_code == 400 and "expired" in resp.json()["error"]
    assert modify(client, lease(client), "Terminated").status_code == 200  # the slot was free


def upload_in_background(client: Client, worker_id: str, content: bytes):
    return in_background(lambda: client.http.post(
        client.url + f"{BASE}/upload/new/{worker_id}", data=content, params={"filename": "paced.bin"},
        headers={"Content-Type": "application/octet-stream"}, timeout=300))


def test_a_paused_upload_stops_until_resumed_and_ends_with_the_right_bytes(small):
    client = small.client()
    content = os.urandom(8 * PACE)  # 8 s at the gateway's pace
    worker_id = lease(client)
    join = upload_in_background(client, worker_id, content)
    until(lambda: status(client, worker_id).get("bytes"), what="the upload moving")
    paused = modify(client, worker_id, "Paused")
    assert paused.status_code == 200 and paused.json()["status"] == "Paused"
    held = status(client, worker_id)["bytes"]
    time.sleep(3)  # a running upload moves a 64 KiB piece every second
    still = status(client, worker_id)
    assert still["status"] == "Paused" and still["bytes"] == held < len(content)
    assert modify(client, worker_id, "Running").json()["status"] == "Running"
    resp = join()
    assert resp.status_code == 200 and resp.json()["status"] == "Completed", resp.text
    assert resp.json()["bytes"] == len(content)
    assert client.get(resp.json()["data"]).content == content


def test_a_terminated_upload_leaves_nothing(small):
    client = small.client()
    before = {row["id"] for row in client.get("/data").json()}
    worker_id = lease(client)
    join = upload_in_background(client, worker_id, os.urandom(8 * PACE))
    until(lambda: status(client, worker_id).get("bytes"), what="the upload moving")
    assert modify(client, worker_id, "Terminated").json()["status"] == "Terminated"
    resp = join()
    assert resp.status_code == 200 and resp.json()["status"] == "Terminated" and "data_id" not in resp.json()
    assert {row["id"] for row in client.get("/data").json()} == before
    assert not list((small.home / "data").glob(".incoming-*"))


def test_a_restart_keeps_the_lease_and_it_still_runs_its_job(small):
    client = small.client()
    worker_id = lease(client)
    small.stop()
    small.start()
    client = small.client()
    assert status(client, worker_id)["status"] == "Not Running"
    resp = client.http.post(client.url + f"{BASE}/job/new/{worker_id}", json={"command": "echo after restart"},
                            timeout=300)
    assert resp.status_code == 200, resp.text
    assert json.loads(resp.text)["status"] == "Completed"


def test_a_job_request_retried_with_its_idempotency_key_reattaches_to_one_job(client, schedd):
    """A client that lost the streamed answer retries with the same key: it gets the first
    request's job and its final state, the schedd has one job with the name, and a plain
    retry would have been refused as a reused lease."""
    worker_id = lease(client)
    name = f"slots-idem-{worker_id[:8]}"
    key = {"Idempotency-Key": f"slots-{worker_id}"}
    body = {"command": "echo once", "name": name}
    first = client.http.post(client.url + f"{BASE}/job/new/{worker_id}", json=body, headers=key, timeout=300)
    retried = client.http.post(client.url + f"{BASE}/job/new/{worker_id}", json=body, headers=key, timeout=300)
    assert first.status_code == retried.status_code == 200, retried.text
    assert json.loads(retried.text)["job_id"] == json.loads(first.text)["job_id"] == retried.headers["X-Job-Id"]
    assert json.loads(retried.text)["status"] == "Completed"
    ads = schedd.query(f'GatewayJobName == "{name}"', ["GatewayJobId"]) + \
        list(schedd.history(f'GatewayJobName == "{name}"', ["GatewayJobId"], match=-1))
    assert {ad["GatewayJobId"] for ad in ads} == {retried.headers["X-Job-Id"]}
    plain = client.post(f"{BASE}/job/new/{worker_id}", json=body)
    assert plain.status_code == 400 and "already used" in plain.json()["error"]
