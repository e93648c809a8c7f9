"""The CLI client and the Python client against a served gateway on the real pool."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from modaclouds_batch.client import BatchClient

from .gateway import BUNDLES, REPO

pytestmark = pytest.mark.integration

SUBMITTED_RE = re.compile(r"submitted job ([0-9a-f-]{36})")


def cli(gateway, *args, timeout: float = 180.0) -> subprocess.CompletedProcess:
    """`python -m modaclouds_batch --url URL ...` as a user runs it, output captured (not a TTY)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODACLOUDS_BATCH_URL", "MODACLOUDS_BATCH_TOKEN")}
    env["MODACLOUDS_BATCH_HOME"] = str(gateway.home)  # where the CLI finds the local admin token
    return subprocess.run([sys.executable, "-m", "modaclouds_batch", "--url", gateway.url, *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def hello_run(gateway):
    """`submit bundles/hello --wait`, run once for the tests that read its job."""
    result = cli(gateway, "submit", "bundles/hello", "--args", "-foo 'two words'", "--name", "cli-hello", "--wait")
    match = SUBMITTED_RE.search(result.stderr)
    assert match, result.stderr
    return result, match.group(1)


def test_submit_wait_shows_live_progress_and_ends_with_the_jobs_stdout(gateway, hello_run):
    result, job_id = hello_run
    assert result.returncode == 0, result.stderr
    progress = result.stderr.splitlines()
    assert any(line.startswith("uploading hello: 100% of") for line in progress), result.stderr
    states = [line.split()[1].rstrip(":") for line in progress if re.match(r"^\d\d:\d\d:\d\d \w+", line)]
    shown = [state for i, state in enumerate(states) if i == 0 or state != states[i - 1]]
    # Every state the job went through, as recorded: a job that starts and ends within one
    # tracker cycle (hello takes under a second) is never seen running, by anyone.
    recorded = [event["state"] for event in gateway.client().job(job_id)["history"]]
    assert shown == recorded and shown[0] == "idle" and shown[-1] == "completed", (progress, recorded)
    assert result.stdout.startswith("hello from ")
    assert "  [-foo]\n  [two words]\n" in result.stdout


def test_logs_and_download_of_a_finished_job(gateway, hello_run, tmp_path):
    _, job_id = hello_run
    stdout = cli(gateway, "logs", job_id)
    assert stdout.returncode == 0 and "[two words]" in stdout.stdout
    stderr = cli(gateway, "logs", job_id, "--stderr")
    assert stderr.returncode == 0 and stderr.stdout == "this line goes to stderr\n"

    target = tmp_path / "out"
    download = cli(gateway, "download", job_id, "--dir", str(target))
    assert download.returncode == 0, download.stderr
    assert download.stdout.splitlines() == [str(target / "hello.txt")]
    assert (target / "hello.txt").read_text() == "hello, world\n-foo\ntwo words\n"

    status = cli(gateway, "status", job_id, "--json")
    assert json.loads(status.stdout)["job_status"] == "completed"
    listed = json.loads(cli(gateway, "jobs", "--status", "completed", "--json").stdout)
    assert job_id in [job["id"] for job in listed]


def test_submit_with_input_folder_downloads_outputs_and_prints_json(gateway, tmp_path):
    texts = tmp_path / "texts"
    (texts / "sub").mkdir(parents=True)
    (texts / "a.txt").write_text("one two three\n")
    (texts / "sub" / "b.txt").write_text("two three\n")
    result = cli(gateway, "submit", str(BUNDLES / "python-wordcount"), "--input", str(texts),
                 "--download", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["job_status"] == "completed" and job["has_input"] is True
    assert job["downloaded"] == [str(tmp_path / "out" / "counts.json")]
    counts = json.loads((tmp_path / "out" / "counts.json").read_text())
    assert counts["counts"] == {"one": 1, "two": 2, "three": 2}


def test_a_failing_bundle_with_wait_exits_non_zero_and_shows_its_stderr(gateway):
    result = cli(gateway, "submit", "bundles/fail", "--wait")
    assert result.returncode == 3, result.stderr
    assert result.stdout == "about to fail\n"
    assert "failed: run.sh exited with status 3" in result.stderr
    assert "fail: something went wrong (on purpose)" in result.stderr


def test_acting_on_a_job_and_the_gateways_refusals(gateway, client):
    job_id = cli(gateway, "submit", "bundles/sleeper", "--args", "120").stdout.strip()
    client.wait_for(job_id, "running")
    held = cli(gateway, "hold", job_id)
    assert held.returncode == 0, held.stderr
    assert held.stdout.startswith(f"hold accepted for job {job_id} (now ")
    client.wait_for(job_id, "held", timeout=60)
    released = cli(gateway, "release", job_id, "--json")
    assert released.returncode == 0 and json.loads(released.stdout)["action"] == "release"
    assert cli(gateway, "remove", job_id).returncode == 0
    client.wait_for(job_id, "removed", timeout=60)
    refused = cli(gateway, "continue", job_id)
    assert refused.returncode == 1 and refused.stderr.startswith("error: HTTP 409: ")


def test_the_python_client_chains_two_jobs(gateway, tmp_path):
    """docs/client.md's pipeline: the second job's input is the first job's output tarball."""
    with BatchClient(gateway.url, home=gateway.home) as client:
        first = client.submit(BUNDLES / "hello", args=["alpha", "beta beta"], name="stage-1")
        first = client.wait(first["id"], timeout=180)
        assert first["job_status"] == "completed", first
        second = client.submit(BUNDLES / "python-wordcount", input=client.artifact(first["id"], "output"),
                               name="stage-2")
        second = client.wait(second["id"], timeout=180)
        assert second["job_status"] == "completed", second
        client.download_output(second["id"], tmp_path)
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert counts["files"] == {"hello.txt": 5}
    assert counts["counts"] == {"hello,": 1, "world": 1, "alpha": 1, "beta": 2}
