"""The managed pool as the gateway sees it: a job goes in through the bindings, as the
gateway's token identity, and its output comes back; the pool answers `status`, survives
a second `up`, and `down` leaves nothing of ours running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import htcondor2
import pytest

from modaclouds_batch.condor import pool as pool_tooling
from modaclouds_batch.condor.pool import daemons, host
from modaclouds_batch.condor.pool.layout import PoolLayout
from modaclouds_batch.condor.pool.mounts import mounts_under

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RUNNING, SUSPENDED, COMPLETED = 2, 7, 4


def _quiet(line: str) -> None:
    """`up`/`down` report progress; tests only read their results."""


def use_client_config(settings) -> htcondor2.Schedd:
    """What the gateway does before any Schedd call: its config, then the schedd's ad."""
    os.environ["CONDOR_CONFIG"] = str(settings.condor_config)
    htcondor2.reload_config()
    ads = twice(lambda: htcondor2.Collector().locateAll(htcondor2.DaemonType.Schedd))
    assert ads, "the collector advertises no schedd"
    schedd = htcondor2.Schedd(ads[0])
    twice(lambda: schedd.query("false", ["ClusterId"]))
    return schedd


def twice(call):
    """After the pool restarts, this process's first call to each daemon fails once
    ("Server rejected our session id": the bindings cache security sessions with the old
    daemons, drop the stale one and only then negotiate anew). Gateways retry once too."""
    try:
        return call()
    except htcondor2.HTCondorException:
        return call()


def submit_spooled(schedd: htcondor2.Schedd, iwd: Path, description: dict) -> int:
    result = schedd.submit(htcondor2.Submit({"initialdir": str(iwd), **description}), spool=True)
    schedd.spool(result)
    return result.cluster()


def wait_for_status(schedd: htcondor2.Schedd, cluster: int, wanted: int, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        ads = schedd.query(f"ClusterId == {cluster}", ["JobStatus", "Owner", "HoldReason"])
        if ads:
            seen = ads[0]
            if seen["JobStatus"] == wanted:
                return seen
        time.sleep(0.5)
    pytest.fail(f"job {cluster} never reached status {wanted}; last seen {seen}")


def forget(schedd: htcondor2.Schedd, cluster: int) -> None:
    """Spooled jobs wait in the queue for their outputs to be fetched; let this one go."""
    schedd.act(htcondor2.JobAction.Remove, f"ClusterId == {cluster}")


def test_a_spooled_echo_job_runs_as_the_pool_identity_and_its_output_comes_back(pool, tmp_path):
    schedd = use_client_config(pool)

    cluster = submit_spooled(schedd, tmp_path, {
        "executable": "/bin/echo",
        "arguments": "hi",
        "transfer_executable": "false",
        "output": "out.txt",
        "error": "err.txt",
        "should_transfer_files": "YES",
        "when_to_transfer_output": "ON_EXIT",
    })
    done = wait_for_status(schedd, cluster, COMPLETED)
    schedd.retrieve(f"ClusterId == {cluster}")

    assert (tmp_path / "out.txt").read_text() == "hi\n"
    assert done["Owner"] == pool.pool_identity
    schedd.edit(f"ClusterId == {cluster}", "LeaveJobInQueue", "false")


def wait_until_executing(schedd: htcondor2.Schedd, cluster: int, timeout: float = 120) -> dict:
    """Until the job's process runs on the worker, not merely JobStatus 2.

    The schedd marks a job running (2) when it starts the shadow; the shadow then activates
    the claim and the starter fetches input and spawns the job, and only then does the shadow
    set JobCurrentStartExecutingDate (and push it to the schedd at once). A suspend sent in
    between reaches a claim with no job yet: measured on 2 busy cores, 1 in 5 such jobs then
    never ran nor suspended (JobStatus stayed 2), the flake this wait closes.
    """
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        ads = schedd.query(f"ClusterId == {cluster}", ["JobStatus", "JobCurrentStartExecutingDate"])
        seen = ads[0] if ads else None
        if seen and seen["JobStatus"] == RUNNING and seen.get("JobCurrentStartExecutingDate"):
            return seen
        time.sleep(0.5)
    pytest.fail(f"job {cluster} never began executing; last seen {seen}")


@pytest.mark.timeout(600)  # three waits of up to 120 s each on a busy machine
def test_an_explicit_suspend_holds_the_job_suspended_until_continue(pool, tmp_path):
    schedd = use_client_config(pool)
    cluster = submit_spooled(schedd, tmp_path, {
        "executable": "/bin/sleep", "arguments": "300", "transfer_executable": "false",
        "should_transfer_files": "YES", "when_to_transfer_output": "ON_EXIT",
    })
    try:
        wait_until_executing(schedd, cluster)

        # Suspend and continue are asynchronous: the schedd accepts the action for the job,
        # the shadow asks the startd, the starter stops (or resumes) the process and tells
        # the shadow, which then updates JobStatus in the schedd. Seconds when idle; the
        # generous timeouts are for 2 busy cores, and the states checked are the same.
        assert schedd.act(htcondor2.JobAction.Suspend, f"ClusterId == {cluster}")["TotalSuccess"] == 1
        wait_for_status(schedd, cluster, SUSPENDED, timeout=120)
        time.sleep(8)  # several startd/negotiator cycles: nothing resumes or evicts it
        assert schedd.query(f"ClusterId == {cluster}", ["JobStatus"])[0]["JobStatus"] == SUSPENDED

        assert schedd.act(htcondor2.JobAction.Continue, f"ClusterId == {cluster}")["TotalSuccess"] == 1
        wait_for_status(schedd, cluster, RUNNING, timeout=120)
    finally:
        forget(schedd, cluster)


def test_the_startd_advertises_the_runtimes_jobs_may_require(pool):
    use_client_config(pool)
    slots = htcondor2.Collector().query(htcondor2.AdType.Startd, projection=["Name", "GatewayRuntimes"])

    assert slots
    assert {ad["GatewayRuntimes"] for ad in slots} == {"bash,python3"}


def test_a_client_without_the_gateways_token_is_refused(pool, tmp_path):
    (tmp_path / "tokens.d").mkdir(mode=0o700)
    config = tmp_path / "condor_config"
    config.write_text(pool.condor_config.read_text().replace(
        f"SEC_TOKEN_DIRECTORY = {pool.condor_config.parent / 'tokens.d'}",
        f"SEC_TOKEN_DIRECTORY = {tmp_path / 'tokens.d'}"))
    assert str(tmp_path / "tokens.d") in config.read_text()

    # A child process: this one holds security sessions made with the token.
    answer = subprocess.run(
        [sys.executable, "-c", "import htcondor2; htcondor2.Collector().query(htcondor2.AdType.Schedd)"],
        env={**os.environ, "CONDOR_CONFIG": str(config)}, capture_output=True, text=True, timeout=60)

    assert answer.returncode != 0
    assert "HTCondorException" in answer.stderr


def test_status_reports_a_running_pool_with_its_slots(pool):
    status = pool_tooling.status(pool)

    assert status.running and status.master_pid
    assert status.slots_total >= 8
    assert 0 <= status.slots_free <= status.slots_total
    assert status.client_config == pool.condor_config
    assert (status.log_dir / "MasterLog").is_file()
    assert json.loads(json.dumps(status.as_dict()))["collector"] == f"127.0.0.1:{pool.collector_port}"


def test_a_second_up_keeps_the_running_pool(pool):
    before = pool_tooling.status(pool)

    again = pool_tooling.up(pool, log=_quiet)

    assert again.running
    assert again.master_pid == before.master_pid


def test_token_is_the_one_the_client_config_uses(pool):
    text = pool_tooling.token(pool)

    token_file = PoolLayout.from_settings(pool).client_token
    assert token_file.read_text().strip() == text
    assert token_file.stat().st_mode & 0o077 == 0


def test_down_stops_everything_it_started_and_up_brings_the_pool_back(pool, tmp_path):
    layout = PoolLayout.from_settings(pool)
    master = pool_tooling.status(pool).master_pid
    ours = [master, *daemons.descendants(master)]
    assert len(ours) >= 5  # master, procd, collector, negotiator, schedd, startd

    pool_tooling.down(pool, log=_quiet)

    assert [pid for pid in ours if host.pid_alive(pid)] == []
    assert not pool_tooling.status(pool).running
    assert mounts_under(layout.chroot_root) == []
    assert _processes_rooted_in(layout.chroot_root) == []

    back = pool_tooling.up(pool, log=_quiet)

    assert back.running and back.master_pid not in ours
    assert back.slots_total >= 8
    # The token survives a restart: the gateway keeps working without a new one.
    schedd = use_client_config(pool)
    cluster = submit_spooled(schedd, tmp_path, {
        "executable": "/bin/true", "transfer_executable": "false",
        "should_transfer_files": "YES", "when_to_transfer_output": "ON_EXIT",
    })
    wait_for_status(schedd, cluster, COMPLETED)
    schedd.edit(f"ClusterId == {cluster}", "LeaveJobInQueue", "false")


def _processes_rooted_in(root: Path) -> list[int]:
    target = os.path.realpath(root)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/root") == target:
                    found.append(int(entry))
            except OSError:
                continue
    return found
