"""Idempotency-Key on the real pool (issue 19, item 1): a retried POST makes one job, counted
in the schedd itself, also when the gateway is SIGKILLed after the schedd accepted the job
and before it answered."""

from __future__ import annotations

import io
import os
import sqlite3
import tarfile
import threading
import uuid

import pytest

from tests.polling import until

from .docs_examples import run_page
from .gateway import Client, GatewayProcess, pack_bundle

pytestmark = pytest.mark.integration

KEY = "Idempotency-Key"


def schedd_jobs(schedd, name: str) -> set[tuple[int, int]]:
    """Every job the schedd has (queue and history) under this gateway job name."""
    constraint = f'GatewayJobName == "{name}"'
    projection = ["ClusterId", "ProcId"]
    ads = [*schedd.history(constraint, projection, match=-1), *schedd.query(constraint, projection)]
    return {(int(ad["ClusterId"]), int(ad["ProcId"])) for ad in ads}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_post_retried_with_the_same_key_makes_one_job(client, schedd):
    name, key, bundle = unique("idem"), str(uuid.uuid4()), pack_bundle("hello")
    # requests picks a new multipart boundary for every request, as curl -F does.
    answers = [client.post("/jobs", files={"job-bundle": ("hello.tar.gz", bundle, "application/gzip")},
                           data={"job-name": name}, headers={KEY: key}) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 201], answers[0].text
    assert len({a.json()["job_id"] for a in answers}) == 1
    assert {a.headers["Location"] for a in answers} == {f"/jobs/{answers[0].json()['job_id']}"}
    assert [a.headers.get("Idempotent-Replayed") for a in answers] == [None, "true", "true"]
    assert len(schedd_jobs(schedd, name)) == 1
    listed = client.get("/jobs", params={"name": name}).json()
    assert [job["id"] for job in listed] == [answers[0].json()["job_id"]]


def test_the_same_key_with_another_body_is_422(client, schedd):
    name, key = unique("idem"), str(uuid.uuid4())
    first = client.post("/jobs", json={"command": "echo one", "name": name}, headers={KEY: key})
    assert first.status_code == 201, first.text
    other = client.post("/jobs", json={"command": "echo two", "name": name}, headers={KEY: key})
    assert other.status_code == 422, other.text
    assert other.json()["field"] == KEY and "new key" in other.json()["error"]
    assert len(schedd_jobs(schedd, name)) == 1


def test_the_same_key_from_another_user_is_independent(gateway, client, schedd):
    created = client.post("/tokens", json={"owner": unique("idem-user")})
    assert created.status_code == 201, created.text
    other = Client(gateway.url, created.json()["token"])
    name, key = unique("idem"), str(uuid.uuid4())
    body = {"command": "echo shared key", "name": name}
    mine = client.post("/jobs", json=body, headers={KEY: key})
    theirs = other.post("/jobs", json=body, headers={KEY: key})
    assert mine.status_code == theirs.status_code == 201, theirs.text
    assert mine.json()["job_id"] != theirs.json()["job_id"]
    assert "Idempotent-Replayed" not in theirs.headers
    assert len(schedd_jobs(schedd, name)) == 2
    assert other.post("/jobs", json=body, headers={KEY: key}).json()["job_id"] == theirs.json()["job_id"]


def test_a_dialect_submit_route_takes_the_key_too(client, schedd):
    key = str(uuid.uuid4())
    answers = [client.post("/async/jobs", json={"command": f"echo {key}"}, headers={KEY: key}) for _ in range(2)]
    assert [a.status_code for a in answers] == [202, 202], answers[0].text
    assert answers[0].json() == answers[1].json()
    assert answers[0].headers["Location"] == answers[1].headers["Location"]
    job = client.job(answers[0].json()["id"])
    assert len(schedd_jobs(schedd, job["name"])) >= 1
    assert client.get("/jobs", params={"name": job["name"]}).headers["X-Total-Count"] != "0"
    constraint = f'GatewayJobId == "{job["id"]}"'
    ads = [*schedd.history(constraint, ["ClusterId"], match=-1), *schedd.query(constraint, ["ClusterId"])]
    assert len({ad["ClusterId"] for ad in ads}) == 1


def test_a_malformed_key_is_400(client):
    resp = client.post("/jobs", json={"command": "echo hi"}, headers={KEY: "k" * 256})
    assert resp.status_code == 400 and resp.json()["field"] == KEY


def test_the_docs_examples_run_as_printed(client, schedd, tmp_path):
    before = len(schedd_jobs(schedd, "safe-retry"))
    run_page("docs/api.md", client, tmp_path, section="Safe retries: `Idempotency-Key`")
    # Two keys, five requests: two jobs.
    assert len(schedd_jobs(schedd, "safe-retry")) == before + 2


def big_input(megabytes: int) -> bytes:
    """A job-input archive of random bytes: spooling it to the schedd takes a while."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("noise.bin")
        info.size = megabytes << 20
        tar.addfile(info, io.BytesIO(os.urandom(info.size)))
    return buf.getvalue()


def wait(predicate, timeout: float, what: str, every: float = 0.002):
    return until(predicate, timeout, what, every)


def test_a_gateway_killed_after_the_schedd_accepted_the_job_answers_the_retry_with_it(tmp_path, condor_config,
                                                                                      schedd):
    """The gateway is stopped exactly between the schedd's accepting the job and its own record
    of it: the test takes the database's write lock the moment the submission intent appears
    (the gateway wrote it, durably, before calling the schedd; the lock makes the job's row
    wait), waits until the schedd has the job with its input spooled, then SIGKILLs the gateway."""
    gateway = GatewayProcess(tmp_path / "idem-home", condor_config).start()
    client = gateway.client()
    name, key = unique("idem-crash"), str(uuid.uuid4())
    bundle, payload = pack_bundle("hello"), big_input(96)
    fields = {"files": {"job-bundle": ("hello.tar.gz", bundle, "application/gzip"),
                        "job-input": ("input.tar.gz", payload, "application/gzip")},
              "data": {"job-name": name}, "headers": {KEY: key}}
    db = sqlite3.connect(gateway.home / "gateway.db", timeout=60, isolation_level=None)
    first: list = []
    sender = threading.Thread(target=lambda: first.append(_post_or_error(client, fields)), daemon=True)
    try:
        sender.start()
        job_id = wait(lambda: db.execute("select job_id from submission_intents").fetchone(), 120,
                      "the submission intent")[0]
        db.execute("begin immediate")  # the gateway's next write (the job's row) waits for this lock
        assert db.execute("select count(*) from jobs where id = ?", [job_id]).fetchone()[0] == 0, \
            "the lock came too late: the gateway recorded the job first"
        key_row = db.execute("select job_ids, state from idempotency_keys").fetchone()
        assert job_id in key_row[0] and key_row[1] == "processing"  # tied before the schedd submit
        constraint = f'GatewayJobId == "{job_id}"'
        wait(lambda: [ad for ad in schedd.query(constraint, ["JobStatus", "StageInFinish"])
                      if ad.get("StageInFinish")], 120, "the job spooled in the schedd", every=0.2)
        gateway.kill()
        assert db.execute("select count(*) from jobs where id = ?", [job_id]).fetchone()[0] == 0
        db.execute("rollback")
    finally:
        db.close()
        gateway.kill()
    sender.join(30)
    assert not first or first[0] is None or first[0].status_code != 201  # the first answer never came
    gateway.start()
    try:
        retry = client.post("/jobs", **fields)
        assert retry.status_code == 201, retry.text
        assert retry.json()["job_id"] == job_id and retry.json()["name"] == name
        assert retry.headers["Location"] == f"/jobs/{job_id}"
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert len(schedd_jobs(schedd, name)) == 1
        done = client.wait_for(job_id, {"completed", "failed"}, timeout=180)
        assert done["job_status"] == "completed", done
        assert len(schedd_jobs(schedd, name)) == 1
        again = client.post("/jobs", **fields)
        assert again.json()["job_id"] == job_id and again.status_code == 201
    finally:
        gateway.stop()


def _post_or_error(client, fields):
    try:
        return client.post("/jobs", **fields)
    except Exception:  # the connection dies with the gateway
        return None
