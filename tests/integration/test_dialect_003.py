"""Seed 003 (workers, jobs and data by header) through HTTP on the real pool, as its clients call it."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from .docs_examples import run_page
from .gateway import Client

pytestmark = pytest.mark.integration

BASE = "/mecrm"
UPPER_PY = b"import sys\nprint(open(sys.argv[1]).read().strip().upper())\n"
WORDS_SH = b"wc -w < \"$1\" | tr -d ' '\n"


def call(client: Client, method: str, path: str, **kw):
    return client.http.request(method, client.url + BASE + path, timeout=kw.pop("timeout", 60), **kw)


def post_data(client: Client, content: bytes, tmp_path) -> str:
    """POST /data as the seed's clients send it: curl -F with a file (and the token)."""
    path = tmp_path / f"upload-{time.monotonic_ns()}"
    path.write_bytes(content)
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-H", f"Authorization: {client.http.headers['Authorization']}",
                          "-F", f"file=@{path}", client.url + BASE + "/data"],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    body, _, status = out.rpartition("\n")
    assert status == "200", out
    return body


def read_data(client: Client, data_id: str) -> bytes:
    resp = call(client, "GET", "/data", headers={"X-Data-Id": data_id})
    assert resp.status_code == 200, resp.text
    boundary = re.search(r"boundary=(\S+)", resp.headers["Content-Type"]).group(1).encode()
    (part,) = resp.content.split(b"--" + boundary)[1:-1]
    head, _, content = part.partition(b"\r\n\r\n")
    assert f'name="file"; filename="{data_id}"'.encode() in head
    return content.removesuffix(b"\r\n")


def wait_status(client: Client, job_id: str, statuses, timeout: float = 180.0) -> dict:
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.monotonic() + timeout
    while True:
        resp = call(client, "GET", "/job", headers={"X-Job-Id": job_id})
        assert resp.status_code == 200, resp.text
        if resp.json()["status"] in statuses:
            return resp.json()
        assert time.monotonic() < deadline, f"job {job_id} still {resp.json()} after {timeout}s"
        time.sleep(0.5)


def post_job(client: Client, **body) -> str:
    resp = call(client, "POST", "/job", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()["job_id"]


@pytest.mark.parametrize("runtime, function, data, answer", [
    ("python3", UPPER_PY, b"hello seed three\n", b"HELLO SEED THREE\n"),
    ("bash", WORDS_SH, b"one two three four\n", b"4\n"),
])
def test_the_example_flow_data_job_poll_until_finished_read_data2(client, tmp_path, runtime, function, data, answer):
    data1 = post_data(client, data, tmp_path)
    function_id = post_data(client, function, tmp_path)
    job_id = post_job(client, data1_id=data1, function_id=function_id, runtime=runtime)
    job = wait_status(client, job_id, {"Finished", "Failed"})
    assert job["status"] == "Finished", job
    assert job["data1_id"] == data1 and job["function_id"] == function_id and job["runtime"] == runtime
    assert read_data(client, job["data2_id"]) == answer
    # the main API sees the same job and objects
    assert client.job(job_id)["job_status"] == "completed"
    assert client.get(f"/data/{job['data2_id']}").content == answer


def test_a_registered_empty_object_receives_the_answer_and_outlives_the_deleted_job(client, tmp_path):
    slot = call(client, "POST", "/data/reg")
    assert slot.status_code == 200 and slot.headers["Content-Type"].startswith("text/plain")
    assert read_data(client, slot.text) == b""
    data1, function_id = post_data(client, b"abc\n", tmp_path), post_data(client, UPPER_PY, tmp_path)
    job_id = post_job(client, data1_id=data1, data2_id=slot.text, function_id=function_id, runtime="python3")
    assert wait_status(client, job_id, {"Finished", "Failed"})["data2_id"] == slot.text
    assert read_data(client, slot.text) == b"ABC\n"
    assert call(client, "DELETE", "/job", headers={"X-Job-Id": job_id}).status_code == 204
    assert call(client, "GET", "/job", headers={"X-Job-Id": job_id}).status_code == 404
    assert read_data(client, slot.text) == b"ABC\n"
    assert call(client, "DELETE", "/data", headers={"X-Data-Id": slot.text}).status_code == 204
    assert call(client, "GET", "/data", headers={"X-Data-Id": slot.text}).status_code == 404


def test_a_runtime_nobody_offers_is_refused_with_those_that_exist(client, tmp_path):
    data1, function_id = post_data(client, b"x", tmp_path), post_data(client, b"x", tmp_path)
    resp = call(client, "POST", "/job", json={"data1_id": data1, "function_id": function_id, "runtime": "cobol"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["field"] == "runtime" and "cobol" in resp.json()["error"]
    assert {"bash", "python3"} <= set(resp.json()["available"])


def test_a_put_that_breaks_the_steps_or_contradicts_the_schedd_is_409(client, tmp_path):
    data1, sleeper = post_data(client, b"x", tmp_path), post_data(client, b"sleep 300\n", tmp_path)
    job_id = post_job(client, data1_id=data1, function_id=sleeper, runtime="bash")
    resp = call(client, "PUT", "/job", headers={"X-Job-Id": job_id}, json={"status": "Finished"})
    assert resp.status_code == 409, resp.text  # Pending -> Finished skips a step; Processing -> Finished: not so
    wait_status(client, job_id, "Processing")
    assert call(client, "PUT", "/job", headers={"X-Job-Id": job_id}, json={"status": "Processing"}).status_code == 204
    resp = call(client, "PUT", "/job", headers={"X-Job-Id": job_id}, json={"status": "Finished"})
    assert resp.status_code == 409 and "HTCondor reports" in resp.json()["error"]
    resp = call(client, "PUT", "/job", headers={"X-Job-Id": job_id}, json={"status": "Pending"})
    assert resp.status_code == 409 and "not a step" in resp.json()["error"]
    resp = call(client, "PUT", "/job", headers={"X-Job-Id": job_id}, json={"status": "Done"})
    assert resp.status_code == 400
    assert call(client, "DELETE", "/job", headers={"X-Job-Id": job_id}).status_code == 204
    assert client.get(f"/jobs/{job_id}").status_code == 404


def test_a_worker_added_gets_its_contract_once_a_job_lands_on_it_then_retires(client, tmp_path):
    # `sh` is a runtime the pool's own node does not advertise: only the new worker takes the job.
    resp = call(client, "POST", "/worker", json={"Runtime": ["sh"]}, timeout=200)
    assert resp.status_code == 200, resp.text
    worker_id = resp.json()["worker_id"]
    try:
        assert call(client, "GET", "/worker", headers={"X-Worker-Id": worker_id}).json() == {
            "worker_id": worker_id, "runtime": ["sh"]}
        data1, function_id = post_data(client, b"a b\n", tmp_path), post_data(client, b"sleep 15; cat \"$1\"\n", tmp_path)
        job_id = post_job(client, data1_id=data1, function_id=function_id, runtime="sh")
        started = time.monotonic()
        contract = call(client, "GET", "/worker/contract", headers={"X-Worker-Id": worker_id}, timeout=90)
        while contract.status_code == 204 and time.monotonic() - started < 120:
            contract = call(client, "GET", "/worker/contract", headers={"X-Worker-Id": worker_id}, timeout=90)
        assert contract.status_code == 200, contract.text
        job = call(client, "GET", "/job", headers={"X-Job-Id": job_id}).json()
        assert contract.json() == {"worker_id": worker_id, "job_id": job_id, "data1_id": data1,
                                   "data2_id": job["data2_id"], "function_id": function_id, "runtime": "sh"}
        done = wait_status(client, job_id, {"Finished", "Failed"})
        assert done["status"] == "Finished" and read_data(client, done["data2_id"]) == b"a b\n"
        assert worker_id in client.job(job_id)["remote_host"]
    finally:
        retire = call(client, "DELETE", "/worker", headers={"X-Worker-Id": worker_id})
    assert retire.status_code == 204, retire.text
    deadline = time.monotonic() + 90
    while client.get(f"/workers/{worker_id}").status_code != 404:
        assert time.monotonic() < deadline, "the retired worker is still in the pool"
        time.sleep(1)


def test_missing_headers_are_400_naming_them(client):
    for method, path, header in [("GET", "/data", "X-Data-Id"), ("GET", "/job", "X-Job-Id"),
                                 ("GET", "/worker", "X-Worker-Id")]:
        resp = call(client, method, path)
        assert resp.status_code == 400 and resp.json()["field"] == header, resp.text


def test_the_docs_page_runs_as_printed(client, tmp_path):
    out = run_page("docs/dialect-003-workers-data.md", client, tmp_path)
    assert "HELLO FROM THE DOCS" in out
