"""A scientist's first hour: resources, a wall-time limit, mistakes caught at submission."""

import io
import tarfile
import time

import pytest

from .gateway import pack, pack_bundle

pytestmark = pytest.mark.integration

TICKER = (b"#!/bin/sh\necho \"started\"\necho partial > \"$MODACLOUDS_BATCH_OUTPUT/partial.txt\"\n"
          b"i=0; while :; do i=$((i+1)); echo \"tick $i\"; sleep 1; done\n")


def test_a_job_asking_two_cpus_runs_in_a_two_cpu_slot(client, schedd):
    resp = client.submit(pack_bundle("hello"), name="two-cpus", **{"job-cpus": "2", "job-memory": "256MB"})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["job_id"]
    assert resp.json()["resources"] == {"cpus": 2, "memory_mb": 256, "disk_mb": 1024}
    client.wait_for(job_id, "completed", timeout=180)
    ad = _job_ad(schedd, job_id, ["RequestCpus", "CpusProvisioned", "RequestMemory"])
    assert ad["RequestCpus"] == 2 and ad["CpusProvisioned"] == 2 and ad["RequestMemory"] == 256


def _job_ad(schedd, job_id, projection, timeout=60.0):
    """The job's ad from the queue or, once it has left, from the history (written a moment later)."""
    constraint = f'GatewayJobId == "{job_id}"'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ad in [*schedd.query(constraint, projection), *schedd.history(constraint, projection, match=1)]:
            return ad
        time.sleep(1)
    raise AssertionError(f"no ad for job {job_id} in the queue or the history after {timeout}s")


def test_a_request_larger_than_any_worker_is_refused_with_the_largest_offer(client):
    resp = client.submit(pack_bundle("hello"), name="too-big", **{"job-memory": "64TB"})
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["field"] == "job-memory"
    assert body["largest_offer"]["memory_mb"] > 0 and "largest offer" in body["error"]
    waiting = client.post("/jobs", json={"command": "true", "memory": "64TB", "resources_wait": True})
    assert waiting.status_code == 201, waiting.text
    assert waiting.json()["resources"]["memory_mb"] == 64 * 1024 * 1024
    assert client.post(f"/jobs/{waiting.json()['job_id']}/remove").status_code == 202


def test_a_job_over_its_time_limit_fails_with_the_reason_and_keeps_what_it_printed(client):
    resp = client.submit(pack(None, {"run.sh": TICKER}), name="over-time", **{"job-time-limit": "4s"})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["job_id"]
    assert resp.json()["time_limit"] == 4
    job = client.wait_for(job_id, {"completed", "failed"}, timeout=180)
    assert job["job_status"] == "failed", job
    assert job["state_reason"].startswith("exceeded its time limit of 4 s"), job
    stdout = client.get(f"/jobs/{job_id}/artifacts/stdout").text
    assert "started" in stdout and "tick 2" in stdout
    assert "exceeded its time limit" in client.get(f"/jobs/{job_id}/artifacts/stderr").text
    output = client.get(f"/jobs/{job_id}/artifacts/output")
    with tarfile.open(fileobj=io.BytesIO(output.content), mode="r:gz") as tar:
        assert tar.extractfile("./partial.txt").read() == b"partial\n"


@pytest.mark.parametrize("field, value", [("job-cpus", "lots"), ("job-memory", "8XB"), ("job-time-limit", "1.5h")])
def test_malformed_requests_name_the_field(client, field, value):
    resp = client.submit(pack_bundle("hello"), name="malformed", **{field: value})
    assert resp.status_code == 400, resp.text
    assert field in resp.json()["error"]


def _refused_leaving_nothing(gateway, send, expected: str) -> None:
    """``send()`` answers 400 with the fix, and no job folder or job is left behind."""
    jobs_dir = gateway.home / "jobs"
    before = set(jobs_dir.iterdir()) if jobs_dir.exists() else set()
    total = gateway.client().get("/jobs").headers["X-Total-Count"]
    resp = send()
    assert resp.status_code == 400, resp.text
    assert expected in resp.json()["error"], resp.json()
    assert resp.json()["field"] == "job-bundle"
    assert (set(jobs_dir.iterdir()) if jobs_dir.exists() else set()) == before
    assert gateway.client().get("/jobs").headers["X-Total-Count"] == total


def test_windows_line_endings_are_refused_with_the_sed_fix(gateway, client):
    _refused_leaving_nothing(gateway, lambda: client.submit(pack(None, {"run.sh": b"#!/bin/sh\r\necho hi\r\n"}),
                                                            name="crlf"), "sed -i 's/\\r$//' run.sh")


def test_a_forgotten_at_sign_is_refused_with_the_right_curl(gateway, client):
    _refused_leaving_nothing(gateway, lambda: client.post(
        "/jobs", files={"job-bundle": (None, "myjob.tar.gz")}, data={"job-name": "no-at"}),
        "-F job-bundle=@myjob.tar.gz")


def test_a_bundle_packed_one_folder_too_deep_is_refused_with_the_tar_command(gateway, client):
    _refused_leaving_nothing(gateway, lambda: client.submit(pack(None, {"myjob/run.sh": b"#!/bin/sh\necho hi\n"}),
                                                            name="deep"), "tar czf bundle.tar.gz -C myjob .")


def test_a_misspelt_field_gets_a_suggestion(client):
    resp = client.submit(pack_bundle("hello"), name="typo", **{"job-argumets": "-x"})
    assert resp.status_code == 400
    assert "did you mean 'job-arguments'?" in resp.json()["error"]


def test_the_cli_submits_resources_and_a_time_limit(gateway, tmp_path):
    import json
    import subprocess
    import sys

    bundle = tmp_path / "ticker"
    bundle.mkdir()
    (bundle / "run.sh").write_bytes(TICKER)
    (bundle / "run.sh").chmod(0o755)
    result = subprocess.run(
        [sys.executable, "-m", "modaclouds_batch", "--url", gateway.url, "submit", str(bundle),
         "--cpus", "2", "--memory", "300MB", "--time-limit", "3s", "--wait", "--json"],
        capture_output=True, text=True, timeout=240, env=_cli_env_for(gateway))
    assert result.returncode == 3, result.stderr  # failed
    job = json.loads(result.stdout)
    assert job["resources"]["cpus"] == 2 and job["resources"]["memory_mb"] == 300
    assert job["time_limit"] == 3 and job["state_reason"].startswith("exceeded its time limit of 3 s")


def _cli_env():
    import os

    return {k: v for k, v in os.environ.items() if k not in ("MODACLOUDS_BATCH_URL", "MODACLOUDS_BATCH_TOKEN")}


def _cli_env_for(gateway):
    """The CLI finds the local admin token in the gateway's home, as on a laptop with the default home."""
    return {**_cli_env(), "MODACLOUDS_BATCH_HOME": str(gateway.home)}


def test_an_idle_job_says_why_it_waits(client):
    runtime = client.submit(pack_bundle("hello"), name="wants-fortran",
                            **{"job-runtime": "fortran77", "job-runtime-wait": "true"}).json()["job_id"]
    huge = client.post("/jobs", json={"command": "true", "cpus": 1000, "resources_wait": True}).json()["job_id"]
    try:
        job = client.wait_until(runtime, lambda j: (j["state_reason"] or "").startswith("no worker that takes jobs"),
                                timeout=30, what="the runtime reason")
        assert job["job_status"] == "idle" and "fortran77" in job["state_reason"]
        job = client.wait_until(huge, lambda j: "large enough for 1000 CPUs" in (j["state_reason"] or ""),
                                timeout=30, what="the size reason")
    finally:
        for job_id in (runtime, huge):
            client.post(f"/jobs/{job_id}/remove")


def test_an_idle_job_on_a_drained_pool_says_so_and_starts_once_undrained(client):
    worker = next(w for w in client.get("/workers").json() if not w["managed_by_gateway"])["name"]
    drained = client.post(f"/workers/{worker}/drain", json={"how": "graceful"})
    assert drained.status_code == 202, drained.text
    try:
        job_id = client.submit(pack_bundle("hello"), name="waits-for-undrain").json()["job_id"]
        job = client.wait_until(job_id, lambda j: "every worker is draining" in (j["state_reason"] or ""),
                                timeout=30, what="the drained reason")
        assert job["job_status"] == "idle"
    finally:
        _undrain(client, worker)
    job = client.wait_for(job_id, "completed", timeout=180)
    assert job["state_reason"] == "run.sh exited with status 0"


def _undrain(client, worker: str) -> None:
    """Undrain, retrying while the collector still shows the drain as not started."""
    deadline = time.monotonic() + 60
    while True:
        resp = client.post(f"/workers/{worker}/undrain")
        if resp.status_code in (200, 202) or time.monotonic() > deadline:
            assert resp.status_code in (200, 202), resp.text
            return
        time.sleep(1)
