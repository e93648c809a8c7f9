"""One home and one database serve one gateway; nothing of another gateway is swept;
leftovers go; the state on disk is private (issue 11, items 1, 2, 7, 8)."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .gateway import REPO, Client, GatewayProcess, pack_bundle

pytestmark = pytest.mark.integration


def serve_once(home: Path, condor_config: Path, *extra: str) -> subprocess.CompletedProcess:
    """`serve` expected to refuse at once: its exit status and what it said."""
    return subprocess.run(
        [sys.executable, "-m", "modaclouds_batch", "--home", str(home), "serve", "--port", "1",
         "--condor-config", str(condor_config), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=60)


def completed_job(client: Client) -> dict:
    job_id = client.submit(pack_bundle("hello"), name="state").json()["job_id"]
    return client.wait_for(job_id, {"completed", "failed"}, timeout=180)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_second_gateway_on_the_same_home_refuses_and_the_first_keeps_its_jobs(tmp_path, condor_config):
    first = GatewayProcess(tmp_path / "home", condor_config).start()
    client = first.client()
    try:
        job = completed_job(client)
        assert job["job_status"] == "completed", job
        second = serve_once(first.home, condor_config, "--db-path", str(tmp_path / "other.db"))
        assert second.returncode == 75, second.stderr
        assert f"pid {first.proc.pid}" in second.stderr and ".gateway.lock" in second.stderr
        assert not (tmp_path / "other.db").exists()
        stdout = client.get(f"/jobs/{job['job_id']}/artifacts/stdout")
        assert stdout.status_code == 200 and stdout.text
    finally:
        first.stop()


def test_another_database_on_the_home_later_leaves_the_first_gateways_folders(tmp_path, condor_config):
    """What the docs allow: `serve --db-path other.db` on the same home, one after the other."""
    first = GatewayProcess(tmp_path / "home", condor_config).start()
    client = first.client()
    job = completed_job(client)
    first.stop()
    other = GatewayProcess(tmp_path / "home", condor_config)
    other_db = tmp_path / "other.db"
    other.env = {**other.env, "MODACLOUDS_BATCH_DB_PATH": str(other_db)}
    other.start()
    other.stop()
    assert (first.home / "jobs" / job["job_id"]).is_dir()
    first.start()
    try:
        output = client.get(f"/jobs/{job['job_id']}/artifacts/output")
        assert output.status_code == 200, output.text
    finally:
        first.stop()


def test_two_processes_on_one_database_refuse(tmp_path, condor_config):
    first = GatewayProcess(tmp_path / "first-home", condor_config).start()
    try:
        second = serve_once(tmp_path / "second-home", condor_config, "--db-path", str(first.home / "gateway.db"))
        assert second.returncode == 75, second.stderr
        assert f"pid {first.proc.pid}" in second.stderr and "gateway.db.lock" in second.stderr
        assert first.client().get("/health").status_code == 200
    finally:
        first.stop()


def test_a_job_another_process_is_submitting_is_left_alone_until_its_intent_goes(tmp_path, condor_config, schedd):
    """The tracker removes a job of ours with no row only when it has no intent either,
    and only after the grace period."""
    import htcondor2
    import sqlite3

    gateway = GatewayProcess(tmp_path / "home", condor_config,
                             env={"MODACLOUDS_BATCH_ORPHAN_GRACE_SECONDS": "3"}).start()
    job_id = str(uuid.uuid4())
    try:
        instance = (gateway.home / ".gateway-instance").read_text().strip()
        db = sqlite3.connect(gateway.home / "gateway.db", timeout=30)
        with db:  # what another process on this database writes before its submit
            db.execute("insert into submission_intents (job_id, created_at, pid) values (?, ?, ?)",
                       [job_id, "2026-01-01T00:00:00.000000Z", 1])
        submit = htcondor2.Submit({
            "executable": "/bin/sleep", "arguments": "600", "transfer_executable": "false",
            "should_transfer_files": "NO", "My.GatewayInstance": f'"{instance}"', "My.GatewayJobId": f'"{job_id}"'})
        cluster = schedd.submit(submit).cluster()
        constraint = f"ClusterId == {cluster}"
        time.sleep(10)  # several tracker cycles (1 s) and more than the grace period
        statuses = [ad.get("JobStatus") for ad in schedd.query(constraint, ["JobStatus"])]
        assert len(statuses) == 1 and statuses[0] != 3, statuses
        with db:
            db.execute("delete from submission_intents where job_id = ?", [job_id])
        db.close()
        deadline = time.monotonic() + 60
        while schedd.query(constraint + " && JobStatus != 3", ["JobStatus"]):
            assert time.monotonic() < deadline, "the orphan was never removed"
            time.sleep(0.5)
    finally:
        gateway.stop()
        with contextlib.suppress(htcondor2.HTCondorException):
            schedd.act(htcondor2.JobAction.Remove, f'GatewayJobId == "{job_id}"')


def test_a_leftover_incoming_upload_is_swept_at_start(tmp_path, condor_config):
    gateway = GatewayProcess(tmp_path / "home", condor_config).start()
    client = gateway.client()
    kept = client.post("/data", data=b"kept", params={"filename": "kept.txt"}).json()
    gateway.kill()  # as a kill -9 during an upload would leave it
    leftover = gateway.home / "data" / f".incoming-{uuid.uuid4()}"
    leftover.write_bytes(b"half an upload")
    gateway.start()
    try:
        assert not leftover.exists()
        assert client.get(f"/data/{kept['id']}").content == b"kept"
    finally:
        gateway.stop()


def test_a_served_gateways_state_is_private_whatever_the_umask(tmp_path, condor_config):
    gateway = GatewayProcess(tmp_path / "home", condor_config)
    previous = os.umask(0)  # the gateway inherits the loosest umask
    try:
        gateway.start()
    finally:
        os.umask(previous)
    client = gateway.client()
    try:
        data = client.post("/data", data=b"some data", params={"filename": "d.txt"}).json()
        job = completed_job(client)
        assert job["job_status"] == "completed", job
        assert job["answer_id"]
        home = gateway.home
        assert mode(home) == 0o700  # the pool lives elsewhere (the test run's own)
        for folder in (home / "jobs", home / "data", home / "jobs" / job["job_id"]):
            assert mode(folder) == 0o700, folder
        for name in ("gateway.db", "gateway.db-wal", "gateway.db-shm", "gateway.db.lock", ".gateway.lock",
                     ".gateway-instance"):
            assert mode(home / name) == 0o600, name
        made = [p for root in (home / "jobs", home / "data") for p in root.rglob("*")]
        assert {p.name for p in made} >= {"output.tar.gz", "stdout.txt", "stderr.txt", "arguments.sh", data["id"],
                                           job["answer_id"]}
        loose = {str(p.relative_to(home)): oct(mode(p)) for p in made if mode(p) & 0o077}
        assert loose == {}
    finally:
        gateway.stop()
