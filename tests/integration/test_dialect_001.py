"""Seed 001, the job manager, through HTTP on the real pool: the seed's sample calls as printed."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from .fixtures import GATEWAY_ENV
from .docs_examples import run_page
from .gateway import Client, GatewayProcess
from .test_access import AuthedClient, cli_token

pytestmark = pytest.mark.integration

SAMPLE_ID = "dc4eec6e-4e34-49a7-8fe8-8e19d5bfb8a4"


def curl(client: Client, *args: str) -> tuple[int, dict]:
    """Run curl as the seed prints it (host changed), with the client's token if it has one."""
    auth = client.http.headers.get("Authorization")
    command = ["curl", "-sS", "-w", "\n%{http_code}", *(["-H", f"Authorization: {auth}"] if auth else []), *args]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body) if body else {}


def sample(text: str, client: Client, job_id: str | None = None) -> list[str]:
    """A sample call of the seed, split into curl's arguments: URL host changed, id substituted."""
    url, rest = text.split(" ", 1)
    method, _, data = rest.partition(" --data ")
    args = [url.replace("https://sky.io", client.url), *method.split()]
    if data:
        args += ["--data", data.strip("'").replace(SAMPLE_ID, job_id or SAMPLE_ID)]
    return args


RUN_SAMPLE = """https://sky.io/api/job/run -X POST --data '{
    "command": "uname -a | wc -l",
}'"""
CANCEL_SAMPLE = """https://sky.io/api/job/cancel -X POST --data '{
    "job_id": "dc4eec6e-4e34-49a7-8fe8-8e19d5bfb8a4",
}'"""
DELETE_SAMPLE = """https://sky.io/api/job/cancel -X DELETE --data '{
    "job_id": "dc4eec6e-4e34-49a7-8fe8-8e19d5bfb8a4",
}'"""


def info(client: Client, job_id: str):
    return client.get(f"/api/job/job_info/{job_id}")


def wait_state(client: Client, job_id: str, states, timeout: float = 150.0) -> dict:
    states = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    while True:
        resp = info(client, job_id)
        assert resp.status_code == 200, resp.text
        if resp.json()["state"] in states:
            return resp.json()
        assert time.monotonic() < deadline, f"job {job_id} still {resp.json()} after {timeout}s (wanted {states})"
        time.sleep(0.5)


def run(client: Client, body: dict) -> str:
    resp = client.post("/api/job/run", data=json.dumps(body))
    assert resp.status_code == 201, resp.text
    return resp.json()["job_id"]


def upload(client: Client, name: str, content: bytes) -> str:
    resp = client.post("/data", params={"filename": name}, data=content,
                       headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_the_seeds_sample_run_then_job_info_until_done_with_its_answer(client):
    status, body = curl(client, *sample(RUN_SAMPLE, client))
    assert status == 201, body
    job_id = body["job_id"]
    done = wait_state(client, job_id, {"DONE", "FAILED"})
    assert done["state"] == "DONE", done
    assert client.get(f"/data/{done['answer_id']}").text == "1\n"  # uname -a | wc -l
    status, listed = curl(client, f"{client.url}/api/list_jobs")  # the seed's list sample
    assert status == 200 and job_id in listed["job_ids"]
    status, same = curl(client, f"{client.url}/api/job/job_info/{job_id}")
    assert status == 200 and same["state"] == "DONE"


def test_a_command_with_a_binary_and_two_input_files_answers_what_it_printed(client):
    tool = upload(client, "shout.sh", b"#!/bin/sh\ncat \"$@\" | tr a-z A-Z\n")
    a, b = upload(client, "a.txt", b"one\n"), upload(client, "b.txt", b"two\n")
    job_id = run(client, {"command": "./shout.sh a.txt b.txt", "binary": tool, "input_files": [a, b]})
    done = wait_state(client, job_id, {"DONE", "FAILED"})
    assert done["state"] == "DONE", done
    assert client.get(f"/data/{done['answer_id']}").text == "ONE\nTWO\n"


def test_bad_runs_are_400_with_the_reason(client):
    for body, words in (('{"ttl": 5,}', "command is required"), ("command=ls", "not JSON"),
                        ('{"command": "ls", "ttl": -5}', "non-negative"),
                        ('{"command": "ls", "binary": "f7c0a3c4-7d5e-4a36-8f34-8a1f6c1d2e3b"}', "no data object")):
        resp = client.post("/api/job/run", data=body)
        assert resp.status_code == 400 and words in resp.json()["error"], resp.text


def test_a_job_past_its_ttl_answers_410(client):
    job_id = run(client, {"command": "sleep 300", "ttl": 5})
    deadline = time.monotonic() + 90
    while (resp := info(client, job_id)).status_code != 410:
        assert resp.status_code == 200 and time.monotonic() < deadline, resp.text
        time.sleep(1)
    assert "expired" in resp.json()["error"]


def test_cancel_as_printed_stops_the_job_and_keeps_its_record(client, schedd):
    job_id = run(client, {"command": "sleep 300"})
    wait_state(client, job_id, "RUNNING")
    status, body = curl(client, *sample(CANCEL_SAMPLE, client, job_id))
    assert (status, body) == (200, {"job_id": job_id})
    assert wait_state(client, job_id, "CANCELLED")["answer_id"] is None
    assert client.get(f"/jobs/{job_id}").json()["job_status"] == "removed"
    assert job_id in client.get("/api/job/list_jobs", params={"state": "CANCELLED"}).json()["job_ids"]
    status, again = curl(client, *sample(CANCEL_SAMPLE, client, job_id))
    assert status == 400 and "already CANCELLED" in again["error"]


def test_delete_removes_a_finished_job_with_its_artifacts(client):
    job_id = run(client, {"command": "echo bye"})
    answer = wait_state(client, job_id, "DONE")["answer_id"]
    resp = client.http.delete(f"{client.url}/api/job/delete", data=json.dumps({"job_id": job_id}), timeout=30)
    assert resp.status_code == 200 and resp.json() == {"job_id": job_id}
    assert info(client, job_id).status_code == 404
    assert client.get(f"/jobs/{job_id}/artifacts/stdout").status_code == 404
    assert client.get(f"/data/{answer}").status_code == 404
    assert job_id not in client.get("/api/list_jobs").json()["job_ids"]


def test_the_seeds_delete_sample_removes_a_running_job_from_the_pool(client, schedd):
    job_id = run(client, {"command": "sleep 300"})
    wait_state(client, job_id, "RUNNING")
    status, body = curl(client, *sample(DELETE_SAMPLE, client, job_id))
    assert (status, body) == (200, {"job_id": job_id})
    assert info(client, job_id).status_code == 404
    deadline = time.monotonic() + 60
    while schedd.query(f'GatewayJobId == "{job_id}"', ["JobStatus"]):
        assert time.monotonic() < deadline, "the deleted job is still in the schedd"
        time.sleep(1)
    status, missing = curl(client, *sample(DELETE_SAMPLE, client, job_id))
    assert status == 404 and job_id in missing["error"]


def test_the_main_api_deletes_too(client):
    job_id = run(client, {"command": "true"})
    wait_state(client, job_id, "DONE")
    resp = client.http.delete(f"{client.url}/jobs/{job_id}", timeout=30)
    assert resp.status_code == 204 and resp.content == b""
    assert client.get(f"/jobs/{job_id}").status_code == 404


@pytest.fixture(scope="module")
def two_users(tmp_path_factory, condor_config):
    home = tmp_path_factory.mktemp("dialect-001-users")
    gateway = GatewayProcess(home, condor_config, env={**GATEWAY_ENV, "MODACLOUDS_BATCH_AUTH": "true"}).start()
    clients = {name: AuthedClient(gateway.url, cli_token(home, name, role)["token"])
               for name, role in (("alice", "user"), ("bob", "user"), ("root", "admin"))}
    yield clients
    gateway.stop()


def test_users_list_their_own_jobs_and_get_403_for_anothers(two_users):
    alice, bob, root = two_users["alice"], two_users["bob"], two_users["root"]
    job_id = run(alice, {"command": "true"})
    assert alice.get("/api/list_jobs").json()["job_ids"] == [job_id]
    assert bob.get("/api/list_jobs").json()["job_ids"] == []
    refused = bob.get("/api/job/list_jobs", params={"user": "alice"})
    assert refused.status_code == 403 and "error" in refused.json()
    assert root.get("/api/job/list_jobs", params={"user": "alice"}).json()["job_ids"] == [job_id]
    assert info(bob, job_id).status_code == 404  # another user's job is not found, so ids do not leak
    status, _ = curl(bob, *sample(CANCEL_SAMPLE, bob, job_id))
    assert status == 404


def test_the_docs_page_runs_as_printed(client, tmp_path):
    out = run_page("docs/dialect-001-job-manager.md", client, tmp_path)
    assert "ONE\nTWO" in out
