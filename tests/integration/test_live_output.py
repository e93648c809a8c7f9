"""Live output on the real pool: stdout read while the job runs, followed, kept on removal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from .gateway import REPO, pack_bundle

pytestmark = pytest.mark.integration


def _stdout(client, job_id, **kw):
    return client.get(f"/jobs/{job_id}/artifacts/stdout", **kw)


def _wait_for_output(client, job_id, needle: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        resp = _stdout(client, job_id)
        if resp.status_code == 200 and needle in resp.text:
            return resp.text
        assert time.monotonic() < deadline, f"{needle!r} not in the stdout of {job_id}: {resp.status_code} {resp.text}"
        time.sleep(0.5)


def test_a_running_jobs_stdout_is_read_while_it_runs_and_grows(client):
    job_id = client.submit(pack_bundle("sleeper"), name="live-grows", arguments="30").json()["job_id"]
    early = client.get(f"/jobs/{job_id}/artifacts/stdout")
    if early.status_code == 404:  # not started yet: the answer says when to ask again
        assert int(early.headers["Retry-After"]) >= 1 and early.json()["job_status"] in ("idle", "running")
    first = _wait_for_output(client, job_id, "tick 2/30")
    assert client.job(job_id)["job_status"] == "running"
    later = _wait_for_output(client, job_id, "tick 5/30")
    assert later.startswith(first) and len(later) > len(first)
    rest = _stdout(client, job_id, headers={"Range": f"bytes={len(first)}-"})
    assert rest.status_code == 206 and later[len(first):] in rest.text
    client.post(f"/jobs/{job_id}/remove")


def test_a_removed_job_keeps_what_it_printed(client):
    job_id = client.submit(pack_bundle("sleeper"), name="live-removed", arguments="120").json()["job_id"]
    printed = _wait_for_output(client, job_id, "tick 3/120")
    assert client.post(f"/jobs/{job_id}/remove").status_code == 202
    client.wait_for(job_id, "removed", timeout=60)
    time.sleep(3)  # the schedd has cleaned the job's spool by now
    kept = _stdout(client, job_id)
    assert kept.status_code == 200 and kept.text.startswith(printed)
    assert client.get(f"/jobs/{job_id}/artifacts/output").status_code == 404


def test_a_finished_streaming_job_has_its_whole_stdout(client):
    job_id = client.submit(pack_bundle("sleeper"), name="live-whole", arguments="3").json()["job_id"]
    job = client.wait_for(job_id, "completed", timeout=180)
    assert job["outputs_ready"]
    assert [line.split()[1] for line in _stdout(client, job_id).text.splitlines()] == ["1/3", "2/3", "3/3"]


def test_logs_follow_shows_each_line_within_seconds_of_the_job_printing_it(client, gateway):
    job_id = client.submit(pack_bundle("sleeper"), name="live-follow", arguments="8").json()["job_id"]
    env = {k: v for k, v in os.environ.items() if k not in ("MODACLOUDS_BATCH_URL", "MODACLOUDS_BATCH_TOKEN")}
    env["MODACLOUDS_BATCH_HOME"] = str(gateway.home)  # where the CLI finds the local admin token
    follower = subprocess.Popen(
        [sys.executable, "-m", "modaclouds_batch", "--url", gateway.url, "logs", "-f", job_id],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lags = []
    try:
        for line in follower.stdout:
            # "tick 3/8 16:02:11": the job's own clock (the same host) against ours on arrival.
            printed = datetime.strptime(line.split()[2], "%H:%M:%S").time()
            now = datetime.now(timezone.utc)
            lag = (now - now.replace(hour=printed.hour, minute=printed.minute, second=printed.second,
                                     microsecond=0)).total_seconds() % 86400
            lags.append(lag)
        assert follower.wait(120) == 0, follower.stderr.read()
    finally:
        follower.kill()
    assert len(lags) == 8, lags
    # Generous for 2 busy cores: streaming plus a 1 s poll; the benchmark measures the real figure.
    assert max(lags) < 15, lags
