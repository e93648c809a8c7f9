"""Reusable data, command jobs, job arrays and expiry, on the real pool through HTTP."""

from __future__ import annotations

import io
import tarfile
import time

import pytest

from .gateway import pack, pack_bundle

pytestmark = pytest.mark.integration

PARAM_BUNDLE = pack(None, {"run.sh": (
    b"#!/bin/sh\n"
    b"words=$(cat data/words.txt | wc -w)\n"
    b"echo \"param=$1 index=$MODACLOUDS_BATCH_ARRAY_INDEX words=$words\"\n"
    b"echo \"$1:$words\" > \"$MODACLOUDS_BATCH_OUTPUT/result.txt\"\n")})


def upload(client, content: bytes, filename: str, **params) -> dict:
    resp = client.post("/data", files={"file": (filename, content)}, params=params)
    assert resp.status_code == 201, resp.text
    return resp.json()


def untar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name.lstrip("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_one_upload_serves_an_array_of_50_parameter_sets(client):
    bundle = upload(client, PARAM_BUNDLE, "param.tar.gz")
    dataset = upload(client, pack(None, {"data/words.txt": b"one two three four\n"}), "dataset.tar.gz")
    params = [f"p{i}" for i in range(50)]
    resp = client.post("/jobs", json={"name": "sweep", "bundle_id": bundle["id"], "input_ids": [dataset["id"]],
                                      "array": params})
    assert resp.status_code == 201, resp.text
    array = resp.json()
    assert array["count"] == 50 and len(set(array["job_ids"])) == 50
    assert resp.headers["Location"] == f"/arrays/{array['id']}"
    assert len({j["backend_id"] for j in array["jobs"]}) == 1  # one cluster
    assert sorted(j["proc_id"] for j in array["jobs"]) == list(range(50))

    deadline = time.monotonic() + 600
    while True:
        view = client.get(f"/arrays/{array['id']}").json()
        if view["counts"].get("completed", 0) + view["counts"].get("failed", 0) == 50:
            break
        assert time.monotonic() < deadline, view["counts"]
        time.sleep(2)
    assert view["counts"] == {"completed": 50}
    for index, job_id in enumerate(array["job_ids"]):
        files = untar(client.get(f"/jobs/{job_id}/artifacts/output").content)
        assert files["result.txt"].decode().strip() == f"p{index}:4"
    listed = client.get("/jobs", params={"array_id": array["id"], "limit": 100}).json()
    assert len(listed) == 50


def test_two_jobs_chain_through_the_answer_object(client):
    first = client.submit(pack(None, {"run.sh": b"#!/bin/sh\necho 'alpha beta gamma' > \"$MODACLOUDS_BATCH_OUTPUT/stage1.txt\"\n"}),
                          name="stage-1").json()
    done = client.wait_for(first["job_id"], "completed", timeout=180)
    answer = done["answer_id"]
    assert answer and done["links"]["answer"] == f"/data/{answer}"
    meta = client.get(f"/data/{answer}/metadata").json()
    assert meta["source_job_id"] == first["job_id"] and meta["content_type"] == "application/gzip"

    second = client.post("/jobs", json={"name": "stage-2", "input_ids": [answer], "command": "wc -w < stage1.txt"})
    assert second.status_code == 201, second.text
    job = client.wait_for(second.json()["job_id"], "completed", timeout=180)
    assert client.get(f"/data/{job['answer_id']}").text.strip() == "3"


def test_command_job_with_two_input_files_and_a_binary(client):
    a = upload(client, b"one two\n", "a.txt")
    b = upload(client, b"three four five\n", "b.txt")
    tool = upload(client, b"#!/bin/sh\necho tool says \"$@\"\n", "tool.sh")
    resp = client.post("/jobs", json={"command": "cat a.txt b.txt | wc -w; ./tool.sh hi",
                                      "input_files": [a["id"], b["id"]], "binary": tool["id"]})
    assert resp.status_code == 201, resp.text
    job = client.wait_for(resp.json()["job_id"], {"completed", "failed"}, timeout=180)
    assert job["job_status"] == "completed" and job["kind"] == "command"
    answer = client.get(f"/data/{job['answer_id']}")
    assert answer.status_code == 200 and answer.text.split() == ["5", "tool", "says", "hi"]


def test_expired_jobs_answer_410(client):
    running = client.submit(pack_bundle("sleeper"), name="ttl-running", arguments="300", **{"job-ttl": "5"}).json()
    assert running["ttl"] == 5 and running["expires_at"]
    deadline = time.monotonic() + 120
    while client.get(f"/jobs/{running['job_id']}").status_code != 410:
        assert time.monotonic() < deadline, client.get(f"/jobs/{running['job_id']}").json()
        time.sleep(2)
    gone = client.get(f"/jobs/{running['job_id']}")
    assert "expired" in gone.json()["error"]
    assert client.get(f"/jobs/{running['job_id']}/artifacts/stdout").status_code == 410
    assert running["job_id"] not in [j["id"] for j in client.get("/jobs", params={"limit": 1000}).json()]


def test_deleting_data_a_queued_job_needs_is_409(client):
    bundle = upload(client, pack_bundle("sleeper"), "sleeper.tar.gz")
    job = client.post("/jobs", json={"bundle_id": bundle["id"], "arguments": "300"}).json()
    refused = client.http.delete(f"{client.url}/data/{bundle['id']}")
    assert refused.status_code == 409 and job["job_id"] in refused.json()["jobs"]
    client.post(f"/jobs/{job['job_id']}/remove")
    client.wait_for(job["job_id"], "removed", timeout=60)
    assert client.http.delete(f"{client.url}/data/{bundle['id']}").status_code == 204
    assert client.get(f"/data/{bundle['id']}").status_code == 404


def test_oversize_data_upload_is_413_and_leaves_nothing(small_limits_gateway):
    gateway, client = small_limits_gateway
    data_dir = gateway.home / "data"
    before = sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else []
    resp = client.post("/data", files={"file": ("big.bin", b"x" * (5 << 20))})
    assert resp.status_code == 413, resp.text
    after = sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else []
    assert after == before


def test_ranges_etags_and_conditional_replace(client):
    obj = upload(client, b"0123456789", "digits.txt")
    part = client.get(f"/data/{obj['id']}", headers={"Range": "bytes=2-5"})
    assert part.status_code == 206 and part.content == b"2345"
    assert part.headers["Content-Range"] == "bytes 2-5/10"
    assert client.get(f"/data/{obj['id']}", headers={"Range": "bytes=-3"}).content == b"789"
    assert client.get(f"/data/{obj['id']}", headers={"Range": "bytes=50-"}).status_code == 416
    full = client.get(f"/data/{obj['id']}")
    assert full.content == b"0123456789" and "digits.txt" in full.headers["Content-Disposition"]
    etag = full.headers["ETag"]
    assert client.get(f"/data/{obj['id']}", headers={"If-None-Match": etag}).status_code == 304
    head = client.http.head(f"{client.url}/data/{obj['id']}")
    assert head.status_code == 200 and head.headers["Content-Length"] == "10" and head.headers["ETag"] == etag

    stale = client.http.put(f"{client.url}/data/{obj['id']}", data=b"new", headers={"If-Match": '"deadbeef"'})
    assert stale.status_code == 412
    fresh = client.http.put(f"{client.url}/data/{obj['id']}", data=b"new", headers={"If-Match": etag})
    assert fresh.status_code == 200 and fresh.json()["size"] == 3
    assert client.get(f"/data/{obj['id']}").content == b"new"
    listed = client.get("/data").json()
    assert obj["id"] in [d["id"] for d in listed]


def test_bad_data_references_are_clear_400s_or_404s(client):
    bad = client.post("/jobs", json={"bundle_id": "not-a-uuid"})
    assert bad.status_code == 400 and bad.json()["field"] == "job-bundle-id"
    missing = client.post("/jobs", json={"bundle_id": "00000000-0000-4000-8000-000000000000"})
    assert missing.status_code == 404
    both = client.post("/jobs", json={"command": "true", "array": ["a"], "count": 2})
    assert both.status_code == 400
    unknown = client.post("/jobs", json={"commnd": "true"})
    assert unknown.status_code == 400 and "commnd" in unknown.json()["error"]
