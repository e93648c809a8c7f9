"""Job dependencies on the real pool: stage 2 starts only once stage 1 completed; a failed
stage 1 removes what waits for it (and notifies); afterany runs anyway; another user's job
cannot be named; the wait survives a gateway restart; the docs' example runs as printed."""

from __future__ import annotations

import time

import pytest

from modaclouds_batch.condor import submit_description as sd
from modaclouds_batch.timefmt import parse_iso

from ..receiver import Receiver
from .docs_examples import run_page
from .fixtures import GATEWAY_ENV
from .gateway import GatewayProcess, pack_bundle
from .test_access import AuthedClient, cli_token

pytestmark = pytest.mark.integration

FINAL = {"completed", "failed", "removed", "submission_error"}


def submitted(resp) -> dict:
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_stage_two_waits_without_starting_and_starts_after_stage_one_completed(client, schedd):
    stage1 = submitted(client.submit(pack_bundle("sleeper"), name="stage-1", arguments="4"))["job_id"]
    stage2 = submitted(client.submit(pack_bundle("hello"), name="stage-2", **{"job-after": stage1}))
    assert stage2["job_status"] == "idle" and stage2["state_reason"] == f"waiting for {stage1}"
    assert stage2["after"] == [stage1] and stage2["awaiting_dependencies"] is True
    stage2 = stage2["job_id"]

    client.wait_for(stage1, "running", timeout=120)
    waiting = client.job(stage2)
    assert (waiting["job_status"], waiting["state_reason"], waiting["start_date"]) == (
        "idle", f"waiting for {stage1}", None)
    [ad] = schedd.query(f'{sd.GATEWAY_JOB_ID} == "{stage2}"', ["JobStatus", sd.GATEWAY_WAITING, "NumJobStarts"])
    assert ad["JobStatus"] == 1 and ad[sd.GATEWAY_WAITING] is True and not ad.get("NumJobStarts")
    release = client.post(f"/jobs/{stage2}/release")
    assert release.status_code == 409 and "cannot start it earlier" in release.json()["error"]

    first = client.wait_for(stage1, FINAL, timeout=180)
    second = client.wait_for(stage2, FINAL, timeout=180)
    assert (first["job_status"], second["job_status"]) == ("completed", "completed"), (first, second)
    assert parse_iso(second["start_date"]) >= parse_iso(first["completion_date"])
    assert second["awaiting_dependencies"] is False
    assert client.get(f"/jobs/{stage2}/artifacts/stdout").status_code == 200


def test_a_failed_stage_one_removes_stage_two_with_the_reason_and_its_webhook_fires(client):
    receiver = Receiver()
    try:
        stage1 = submitted(client.submit(pack_bundle("fail"), name="broken-stage-1"))["job_id"]
        stage2 = submitted(client.submit(pack_bundle("hello"), name="never-stage-2", notify=f"{receiver.url}/s2",
                                         **{"job-after": stage1}))["job_id"]
        assert client.wait_for(stage1, FINAL, timeout=180)["job_status"] == "failed"
        job = client.wait_for(stage2, FINAL, timeout=120)
        assert job["job_status"] == "removed", job
        assert job["state_reason"] == f"dependency {stage1} ended failed"
        assert job["start_date"] is None and job["run_count"] in (None, 0)
        [request] = receiver.wait_for(1, path="/s2", timeout=120)
        payload = request["json"]
        assert (payload["job_id"], payload["type"], payload["state_reason"]) == (
            stage2, "job.removed", f"dependency {stage1} ended failed")
        # Naming it now is refused: the job could never start.
        refused = client.submit(pack_bundle("hello"), name="too-late", **{"job-after": stage1})
        assert refused.status_code == 409 and refused.json()["field"] == "after"
    finally:
        receiver.close()


def test_after_any_runs_once_a_failed_stage_ended(client):
    stage1 = submitted(client.submit(pack_bundle("fail"), name="failing-before-cleanup"))["job_id"]
    cleanup = submitted(client.submit(pack_bundle("hello"), name="cleanup", **{"job-after-any": stage1}))
    assert cleanup["after_any"] == [stage1] and cleanup["state_reason"] == f"waiting for {stage1}"
    first = client.wait_for(stage1, FINAL, timeout=180)
    job = client.wait_for(cleanup["job_id"], FINAL, timeout=180)
    assert (first["job_status"], job["job_status"]) == ("failed", "completed"), job
    assert parse_iso(job["start_date"]) >= parse_iso(first["completion_date"])


def test_another_users_job_cannot_be_named_and_answers_like_a_missing_one(gateway):
    alice = AuthedClient(gateway.url, cli_token(gateway.home, "alice-deps")["token"])
    bob = AuthedClient(gateway.url, cli_token(gateway.home, "bob-deps")["token"])
    theirs = submitted(alice.submit(pack_bundle("hello"), name="alices"))["job_id"]
    missing = "00000000-0000-4000-8000-000000000000"
    refused = bob.submit(pack_bundle("hello"), name="bobs", **{"job-after": theirs})
    unknown = bob.submit(pack_bundle("hello"), name="bobs", **{"job-after": missing})
    assert refused.status_code == unknown.status_code == 400
    assert refused.json()["error"] == unknown.json()["error"].replace(missing, theirs)
    assert refused.json()["field"] == "after"
    assert bob.get("/jobs?name=bobs").headers["X-Total-Count"] == "0"  # nothing was created


def test_stage_two_still_starts_after_a_gateway_restart_while_it_waits(tmp_path, condor_config, schedd):
    gateway = GatewayProcess(tmp_path / "deps-restart", condor_config, env=GATEWAY_ENV).start()
    try:
        client = gateway.client()
        stage1 = submitted(client.submit(pack_bundle("sleeper"), name="restart-stage-1", arguments="3"))["job_id"]
        stage2 = submitted(client.submit(pack_bundle("hello"), name="restart-stage-2",
                                         **{"job-after": stage1}))["job_id"]
        gateway.kill()
        # While nobody watches, stage 1 completes (it waits in the queue for its outputs to be
        # fetched) and stage 2 stays gated in the schedd.
        assert wait_for_ad(schedd, stage1, lambda ad: ad.get("JobStatus") == 4), \
            "stage 1 did not complete while the gateway was down"
        [ad] = schedd.query(f'{sd.GATEWAY_JOB_ID} == "{stage2}"', ["JobStatus", sd.GATEWAY_WAITING])
        assert (ad["JobStatus"], ad[sd.GATEWAY_WAITING]) == (1, True)
        gateway.start()
        first = client.wait_for(stage1, FINAL, timeout=120)
        second = client.wait_for(stage2, FINAL, timeout=180)
        assert (first["job_status"], second["job_status"]) == ("completed", "completed"), second
        assert parse_iso(second["start_date"]) >= parse_iso(first["completion_date"])
    finally:
        gateway.stop()


def wait_for_ad(schedd, job_id: str, predicate, timeout: float = 180.0):
    """The job's queue ad once ``predicate`` holds (polled), or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ads = schedd.query(f'{sd.GATEWAY_JOB_ID} == "{job_id}"', ["JobStatus"])
        if ads and predicate(ads[0]):
            return ads[0]
        time.sleep(0.5)
    return None


def test_a_pool_restart_keeps_stage_two_gated_until_stage_one_completes(client, pool, schedd):
    """The gate is in the schedd's queue: it survives the schedd's restart. (Stage 1 is held
    across it, as in test_durability, since a running job stays Running for its lease.)"""
    from modaclouds_batch.condor import pool as pool_tooling

    stage1 = submitted(client.submit(pack_bundle("hello"), name="pool-restart-stage-1"))["job_id"]
    assert client.post(f"/jobs/{stage1}/hold").status_code == 202
    stage2 = submitted(client.submit(pack_bundle("hello"), name="pool-restart-stage-2",
                                     **{"job-after": stage1}))["job_id"]
    # Once its spooling hold is over: a job whose input was still settling when the schedd
    # stopped stays in that hold after the restart (HTCondor's, whatever the job waits for).
    assert wait_for_ad(schedd, stage2, lambda ad: ad.get("JobStatus") == 1), "stage 2 was never queued"
    pool_tooling.down(pool, log=lambda line: None)
    pool_tooling.up(pool, log=lambda line: None)
    assert client.get("/health").status_code == 200
    [ad] = schedd.query(f'{sd.GATEWAY_JOB_ID} == "{stage2}"', ["JobStatus", sd.GATEWAY_WAITING])
    assert (ad["JobStatus"], ad[sd.GATEWAY_WAITING]) == (1, True), dict(ad)
    assert client.job(stage2)["state_reason"] == f"waiting for {stage1}"
    assert client.post(f"/jobs/{stage1}/release").status_code == 202
    first = client.wait_for(stage1, FINAL, timeout=180)
    second = client.wait_for(stage2, FINAL, timeout=180)
    assert (first["job_status"], second["job_status"]) == ("completed", "completed"), second
    assert parse_iso(second["start_date"]) >= parse_iso(first["completion_date"])


def test_the_api_pages_dependency_examples_run_as_printed(client, tmp_path):
    out = run_page("docs/api.md", client, tmp_path, section="Job dependencies: `job-after`, `job-after-any`")
    assert "stage 2 ran" in out
    assert "waiting for" in out and "ended failed" in out
