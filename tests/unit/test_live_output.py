"""Live output: a running job's stdout read as it grows, kept when the job is removed."""

import os
import uuid
from pathlib import Path

import pytest

from modaclouds_batch.app import build_gateway
from modaclouds_batch.condor import submit_description as sd
from modaclouds_batch.jobs import live_output
from modaclouds_batch.jobs.ad_changes import changes_from_ads, keep_output_of_removed
from modaclouds_batch.settings import load_settings
from modaclouds_batch.timefmt import now_iso

from .apps import admin_client


@pytest.fixture
def gateway(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path / "home", "live_output": True}, environ={}))
    yield gw
    gw.store.close()


@pytest.fixture
def client(gateway):
    return admin_client(gateway)


def _job(gateway, tmp_path, state, live_dir=None, **fields):
    job_id = str(uuid.uuid4())
    job_dir = tmp_path / "jobs" / job_id
    job_dir.mkdir(parents=True)
    now = now_iso()
    gateway.store.insert_job({"id": job_id, "name": "j", "owner": "anonymous", "state": state, "created_at": now,
                              "updated_at": now, "job_dir": str(job_dir), "live_dir": live_dir, **fields})
    return job_id, job_dir


def test_streaming_is_asked_of_htcondor_only_when_the_gateway_reads_the_spool():
    spec = dict(job_id="0b0e6a3c-55a4-4c1f-9d2e-6f1c2b3a4d5e", instance_id="i", owner="a", name="n",
                job_dir=Path("/tmp/x"))
    streaming = sd.render_submit(sd.JobSpec(**spec, stream_output=True))
    assert streaming["stream_output"] == "true" and streaming["stream_error"] == "true"
    assert "stream_output" not in sd.render_submit(sd.JobSpec(**spec)).keys()
    assert "Iwd" in sd.JOB_PROJECTION and "StreamOut" in sd.JOB_PROJECTION


def test_live_output_is_on_by_default_only_for_the_pool_the_gateway_runs(tmp_path):
    managed = load_settings(overrides={"home": tmp_path}, environ={}).resolved()
    assert managed.live_output_enabled
    external = load_settings(overrides={"home": tmp_path, "condor_config": tmp_path / "elsewhere"},
                             environ={}).resolved()
    assert not external.live_output_enabled


def test_a_running_jobs_stdout_is_served_as_it_grows_and_a_range_follows_it(client, gateway, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "stdout.txt").write_bytes(b"tick 1\n")
    job_id, _ = _job(gateway, tmp_path, "running", live_dir=str(spool))
    first = client.simulate_get(f"/jobs/{job_id}/artifacts/stdout")
    assert first.status_code == 200 and first.text == "tick 1\n"
    assert first.headers["cache-control"] == "no-store" and first.headers["accept-ranges"] == "bytes"
    with open(spool / "stdout.txt", "ab") as out:
        out.write(b"tick 2\n")
    rest = client.simulate_get(f"/jobs/{job_id}/artifacts/stdout", headers={"Range": "bytes=7-"})
    assert rest.status_code == 206 and rest.text == "tick 2\n"
    assert rest.headers["content-range"] == "bytes 7-13/14"
    nothing_new = client.simulate_get(f"/jobs/{job_id}/artifacts/stdout", headers={"Range": "bytes=14-"})
    assert nothing_new.status_code == 416
    # The output archive only exists once the job has ended.
    output = client.simulate_get(f"/jobs/{job_id}/artifacts/output")
    assert output.status_code == 404 and output.headers["retry-after"]


def test_what_will_come_says_so_with_retry_after(client, gateway, tmp_path):
    job_id, _ = _job(gateway, tmp_path, "idle")
    resp = client.simulate_get(f"/jobs/{job_id}/artifacts/stderr")
    assert resp.status_code == 404
    assert int(resp.headers["retry-after"]) >= 1 and resp.json["job_status"] == "idle"
    assert "once it starts" in resp.json["error"]


def test_a_link_in_the_spool_is_never_followed(client, gateway, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("not yours")
    os.symlink(secret, spool / "stdout.txt")
    job_id, job_dir = _job(gateway, tmp_path, "running", live_dir=str(spool))
    assert client.simulate_get(f"/jobs/{job_id}/artifacts/stdout").status_code == 404
    assert live_output.keep(str(spool), job_dir) == 0 and not (job_dir / "stdout.txt").exists()


def test_a_removed_job_keeps_what_it_printed(client, gateway, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "stdout.txt").write_text("tick 1\ntick 2\n")
    (spool / "stderr.txt").write_text("")
    job_id, job_dir = _job(gateway, tmp_path, "running", live_dir=str(spool))
    job = gateway.store.get_job(job_id)
    ad = {sd.GATEWAY_JOB_ID: job_id, "JobStatus": 3, "Iwd": str(spool), "StreamOut": True,
          "RemoveReason": "remove requested"}
    change = changes_from_ads(job, ad, final_allowed=False)
    assert change.new_state == "removed"
    keep_output_of_removed(job, ad, change)
    gateway.store.apply_job_changes([change])
    for leftover in spool.iterdir():
        leftover.unlink()  # the schedd cleans the spool when the job leaves the queue
    resp = client.simulate_get(f"/jobs/{job_id}/artifacts/stdout")
    assert resp.status_code == 200 and resp.text == "tick 1\ntick 2\n"
    assert client.simulate_get(f"/jobs/{job_id}/artifacts/output").status_code == 404
    assert sorted(p.name for p in job_dir.iterdir()) == ["stderr.txt", "stdout.txt"]  # no .part left
    assert {p.stat().st_mode & 0o777 for p in job_dir.iterdir()} == {0o600}


def test_a_job_that_does_not_stream_has_no_live_folder():
    assert live_output.live_dir_of({"Iwd": "/spool/1/0", "StreamOut": False}) is None
    assert live_output.live_dir_of({"Iwd": "/spool/1/0", "StreamOut": True}) == "/spool/1/0"
