"""The queue management API, end to end: real HTTP server, real HTCondor pool."""

from __future__ import annotations

import io
import json
import re
import tarfile
import uuid

import pytest

from .gateway import pack, pack_bundle

pytestmark = pytest.mark.integration

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def untar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name.lstrip("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_seed_curl_call_runs_a_bundle_to_completion_with_artifacts(client):
    input_archive = pack(None, {"data/words.txt": b"alpha beta beta\n"})
    resp = client.submit(pack_bundle("hello"), name="test1", arguments="-foo 'two words'",
                         input_archive=input_archive)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert UUID_RE.match(body["job_id"])
    assert isinstance(body["backend_id"], int) and body["backend_id"] > 0
    assert resp.headers["Location"] == f"/jobs/{body['job_id']}"
    assert body["name"] == "test1" and body["arguments"] == ["-foo", "two words"]

    job = client.wait_for(body["job_id"], {"completed", "failed"})
    assert job["job_status"] == "completed", job
    assert job["exit_status"] == 0 and job["exit_by_signal"] is False
    assert job["backend_job_status"] == "Completed"
    assert job["start_date"] and job["completion_date"] and job["run_count"] >= 1
    assert set(job["links"]["artifacts"]) == {"output", "stdout", "stderr"}
    assert [e["state"] for e in job["history"]][0] == "idle"
    assert job["history"][-1]["state"] == "completed"

    stdout = client.get(f"/jobs/{job['id']}/artifacts/stdout")
    assert stdout.status_code == 200 and stdout.headers["Content-Type"].startswith("text/plain")
    assert "-foo" in stdout.text and "two words" in stdout.text
    assert "data/words.txt" in stdout.text  # run.sh saw the input unpacked in its working dir
    stderr = client.get(f"/jobs/{job['id']}/artifacts/stderr")
    assert stderr.status_code == 200
    output = client.get(f"/jobs/{job['id']}/artifacts/output")
    assert output.status_code == 200 and output.headers["Content-Type"] == "application/gzip"
    assert any(name.endswith("hello.txt") for name in untar(output.content))


def test_python_bundle_reads_its_input_and_writes_outputs(client):
    input_archive = pack(None, {"a.txt": b"one two three\n", "sub/b.txt": b"two three\n"})
    job_id = client.submit(pack_bundle("python-wordcount"), name="wc", input_archive=input_archive,
                           arguments="--verbose").json()["job_id"]
    job = client.wait_for(job_id, {"completed", "failed"})
    assert job["job_status"] == "completed", client.get(f"/jobs/{job_id}/artifacts/stderr").text
    files = untar(client.get(f"/jobs/{job_id}/artifacts/output").content)
    counts = json.loads(next(v for k, v in files.items() if k.endswith("counts.json")))
    flat = json.dumps(counts)
    assert '"three": 2' in flat and '"one": 1' in flat
    assert "--verbose" in client.get(f"/jobs/{job_id}/artifacts/stdout").text


def test_failing_bundle_ends_failed_with_its_exit_status(client):
    job_id = client.submit(pack_bundle("fail"), name="fails").json()["job_id"]
    job = client.wait_for(job_id, {"completed", "failed"})
    assert job["job_status"] == "failed"
    assert job["exit_status"] == 3
    assert job["state_reason"] == "run.sh exited with status 3"
    assert client.get(f"/jobs/{job_id}/artifacts/stderr").text.strip() != ""


def test_legacy_urlencoded_script_becomes_run_sh(client):
    resp = client.post("/jobs", data={"job-bundle": "#!/bin/sh\necho legacy \"$@\"\n", "job-arguments": "x y"})
    assert resp.status_code == 201, resp.text
    job = client.wait_for(resp.json()["job_id"], {"completed", "failed"})
    assert job["job_status"] == "completed"
    assert client.get(f"/jobs/{job['id']}/artifacts/stdout").text.strip() == "legacy x y"


def test_every_control_action_on_a_live_job(client):
    job_id = client.submit(pack_bundle("sleeper"), name="sleepy", arguments="300").json()["job_id"]
    client.wait_for(job_id, "running")

    assert client.post(f"/jobs/{job_id}/continue").status_code == 409
    resp = client.post(f"/jobs/{job_id}/suspend")
    assert resp.status_code == 202, resp.text
    client.wait_for(job_id, "suspended", timeout=60)
    assert client.post(f"/jobs/{job_id}/continue").status_code == 202
    client.wait_for(job_id, "running", timeout=60)

    assert client.post(f"/jobs/{job_id}/hold").status_code == 202
    held = client.wait_for(job_id, "held", timeout=60)
    assert held["state_reason"]
    conflict = client.post(f"/jobs/{job_id}/hold")
    assert conflict.status_code == 409
    assert "cannot hold a job that is held" in conflict.json()["error"]
    assert client.post(f"/jobs/{job_id}/release").status_code == 202
    client.wait_for(job_id, {"idle", "running"}, timeout=60)

    assert client.post(f"/jobs/{job_id}/remove").status_code == 202
    removed = client.wait_for(job_id, "removed", timeout=60)
    assert removed["links"]["actions"] == {}
    late = client.post(f"/jobs/{job_id}/release")
    assert late.status_code == 409 and "already removed" in late.json()["error"]
    artifact = client.get(f"/jobs/{job_id}/artifacts/output")
    assert artifact.status_code == 404 and "removed" in artifact.json()["error"]


def test_legacy_get_form_of_an_action_works(client):
    job_id = client.submit(pack_bundle("sleeper"), name="legacy-action", arguments="300").json()["job_id"]
    assert client.get(f"/jobs/{job_id}/remove").status_code == 202
    client.wait_for(job_id, "removed", timeout=60)


def test_unknown_and_malformed_ids(client):
    missing = client.get(f"/jobs/{uuid.uuid4()}")
    assert missing.status_code == 404 and "no job with id" in missing.json()["error"]
    malformed = client.get("/jobs/not-a-uuid")
    assert malformed.status_code == 400 and "UUID" in malformed.json()["error"]
    assert client.post(f"/jobs/{uuid.uuid4()}/explode").status_code == 404


def test_the_output_is_404_with_retry_after_before_the_job_ends(client):
    job_id = client.submit(pack_bundle("sleeper"), name="early", arguments="300").json()["job_id"]
    resp = client.get(f"/jobs/{job_id}/artifacts/output")
    assert resp.status_code == 404 and "available once it ends" in resp.json()["error"]
    assert int(resp.headers["Retry-After"]) >= 1 and resp.json()["job_status"] in ("idle", "running")
    client.post(f"/jobs/{job_id}/remove")


def test_listing_is_newest_first_paginated_and_filterable(client):
    tag = uuid.uuid4().hex[:8]
    ids = [client.submit(pack_bundle("hello"), name=f"list-{tag}-{i}").json()["job_id"] for i in range(3)]
    first = client.get("/jobs", params={"name": f"list-{tag}-*", "limit": 2})
    assert first.status_code == 200
    assert [j["id"] for j in first.json()] == ids[::-1][:2]
    assert first.headers["X-Total-Count"] == "3"
    assert set(first.json()[0]) >= {"id", "job_status", "name", "created_at"}
    second = client.get("/jobs", params={"name": f"list-{tag}-*", "limit": 2, "cursor": first.headers["X-Next-Cursor"]})
    assert [j["id"] for j in second.json()] == [ids[0]]
    assert "X-Next-Cursor" not in second.headers
    bad = client.get("/jobs", params={"status": "sleeping"})
    assert bad.status_code == 400 and "idle" in bad.json()["error"]
    future = client.get("/jobs", params={"created_after": "2999-01-01T00:00:00Z"})
    assert future.json() == []
