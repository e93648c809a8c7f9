"""Seed 002, the long-running-job pattern, through HTTP on the real pool: 202, poll, cancel, result."""

from __future__ import annotations

import gzip
import time

import pytest

from .docs_examples import run_page
from .gateway import Client, pack_bundle

pytestmark = pytest.mark.integration


def poll_status(client: Client, link: str, wanted, timeout: float = 150.0) -> tuple[dict, list[str]]:
    """Poll a status link as the seed says until the status is one of ``wanted``; returns it and the words seen."""
    wanted = {wanted} if isinstance(wanted, str) else set(wanted)
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(link)
        assert resp.status_code == 200, resp.text
        status = resp.json()
        if not seen or seen[-1] != status["status"]:
            seen.append(status["status"])
        if status["status"] in wanted:
            return status, seen
        assert time.monotonic() < deadline, f"{link}: still {status} after {timeout}s (wanted {wanted})"
        time.sleep(0.3)


def start(client: Client, **kw) -> dict:
    resp = client.post("/async/jobs", **kw)
    assert resp.status_code == 202, resp.text
    assert resp.headers["Location"] == resp.json()["status"]
    return resp.json()


def test_accepted_then_polled_to_complete_then_the_result(client):
    accepted = start(client, files={"job-bundle": ("hello.tar.gz", pack_bundle("hello"), "application/gzip")},
                     data={"job-name": "async-hello", "job-arguments": "one two"})
    job_id = accepted["id"]
    assert accepted == {"id": job_id, "status": f"/async/jobs/{job_id}/status"}
    first = client.get(accepted["status"]).json()
    if first["status"] in ("started", "running"):
        assert first["cancel"] == f"/async/jobs/{job_id}/cancel"
        early = client.get(f"/async/jobs/{job_id}/result")
        assert early.status_code == 409 and "once its status is complete" in early.json()["error"]
    done, seen = poll_status(client, accepted["status"], {"complete", "failed"})
    assert done["status"] == "complete", done
    assert set(seen) <= {"started", "running", "complete"}
    assert "cancel" not in done and done["result"] == f"/async/jobs/{job_id}/result"
    result = client.get(done["result"])
    assert result.status_code == 200, result.text
    result = result.json()
    assert result["status"] == "complete" and result["exit_status"] == 0
    stdout = client.get(result["stdout"]).text
    assert "hello from" in stdout and "[one]" in stdout
    assert gzip.decompress(client.get(result["output"]).content)  # the output archive
    assert client.get(result["answer"] + "/metadata").json()["source_job_id"] == job_id
    listed = client.get("/async/jobs").json()["jobs"]
    assert {"id": job_id, "status": "complete", "link": accepted["status"]} in listed


def test_a_json_command_job_too_and_it_is_seen_by_the_other_doors(client):
    accepted = start(client, json={"command": "echo async"})
    done, _ = poll_status(client, accepted["status"], {"complete", "failed"})
    assert done["status"] == "complete", done
    assert client.get(f"/api/job/job_info/{accepted['id']}").json()["state"] == "DONE"
    assert client.get(f"/jobs/{accepted['id']}").json()["job_status"] == "completed"


def test_cancel_is_204_and_the_job_stays_as_cancelled(client):
    accepted = start(client, json={"command": "sleep 300"})
    running, _ = poll_status(client, accepted["status"], "running")
    resp = client.http.delete(client.url + running["cancel"], timeout=60)
    assert resp.status_code == 204 and resp.content == b""
    cancelled, _ = poll_status(client, accepted["status"], "cancelled", timeout=60)
    assert "cancel" not in cancelled and "result" not in cancelled
    again = client.http.delete(client.url + running["cancel"], timeout=60)
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]
    never = client.get(f"/async/jobs/{accepted['id']}/result")
    assert never.status_code == 409 and "never have a result" in never.json()["error"]
    assert client.get(f"/jobs/{accepted['id']}").json()["job_status"] == "removed"


def test_bad_input_is_400_in_the_error_shape(client):
    resp = client.post("/async/jobs", json={"command": "echo", "count": 2})
    assert resp.status_code == 400 and "one job per request" in resp.json()["error"]
    resp = client.get("/async/jobs", params={"status": "done"})
    assert resp.status_code == 400 and "complete" in resp.json()["error"]
    assert client.get("/async/jobs/nope/status").status_code == 400
    assert client.get("/async/jobs/0f2d3b57-9f53-4b8e-9e5a-2b8f0d2c9e11/status").status_code == 404


def test_the_docs_page_runs_as_printed(client, tmp_path):
    out = run_page("docs/dialect-002-long-running.md", client, tmp_path)
    assert '"exit_status": 0' in out and out.count("42\n") >= 1
