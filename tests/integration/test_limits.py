"""Limits a request cannot get around, on the real pool (issue 11, items 3, 4 and 6)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .fixtures import GATEWAY_ENV
from .gateway import Client, GatewayProcess

pytestmark = pytest.mark.integration

ACTIVE = ["idle", "running", "held", "suspended"]


@pytest.fixture(scope="module")
def limited(tmp_path_factory, condor_config):
    """A gateway with small limits (3 active jobs, 8 MiB of spool, 1 MiB of output); whatever a test
    leaves queued is removed."""
    env = {**GATEWAY_ENV, "MODACLOUDS_BATCH_MAX_ACTIVE_JOBS_PER_USER": "3",
           "MODACLOUDS_BATCH_MAX_INPUT_IDS": "100", "MODACLOUDS_BATCH_MAX_SPOOL_BYTES_PER_USER": str(8 << 20),
           "MODACLOUDS_BATCH_MAX_OUTPUT_BYTES": str(1 << 20),
           # The race below is about max_active_jobs, not the per-user archive-check limit.
           "MODACLOUDS_BATCH_ARCHIVE_VALIDATIONS_PER_USER": "16"}
    process = GatewayProcess(tmp_path_factory.mktemp("limited"), condor_config, env=env).start()
    yield process
    try:
        _remove_active(process.client())
    finally:
        process.stop()


def _remove_active(client: Client, timeout: float = 90.0) -> None:
    """Remove what is still queued and wait until the gateway has seen it go (quota freed)."""
    for job in client.get("/jobs", params={"status": ACTIVE}).json():
        client.post(f"/jobs/{job['id']}/remove")
    deadline = time.monotonic() + timeout
    while client.get("/jobs", params={"status": ACTIVE}).json():
        assert time.monotonic() < deadline, "jobs still active after their removal"
        time.sleep(0.5)


def test_16_concurrent_submissions_accept_exactly_max_active_jobs(limited):
    client = limited.client()

    def submit(index: int) -> requests.Response:
        return requests.post(limited.url + "/jobs", json={"command": "sleep 60", "name": f"race-{index}"},
                             headers={"Authorization": f"Bearer {limited.admin_token}"}, timeout=120)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(submit, range(16)))
    try:
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [201] * 3 + [429] * 13, [a.text for a in answers if a.status_code not in (201, 429)]
        limits = {a.json().get("limit") for a in answers if a.status_code == 429}
        assert limits == {"max_active_jobs"}, [a.text for a in answers if a.status_code == 429][:3]
        assert int(client.get("/jobs").headers["X-Total-Count"]) == 3
        assert client.get("/quota").json()["active_jobs"] == 3
    finally:
        _remove_active(client)


def _peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _send_streamed(url: str, token: str, path: str, head: bytes, size: int, tail: bytes,
                   chunked: bool) -> tuple[int, dict]:
    """POST a JSON body of ``size`` filler bytes without ever holding it: 1 MiB at a time."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Authorization", f"Bearer {token}")
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
    else:
        conn.putheader("Content-Length", str(len(head) + size + len(tail)))
    conn.endheaders()
    block = b"x" * (1 << 20)

    def send(data: bytes) -> None:
        conn.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)

    send(head)
    for _ in range(size // len(block)):
        send(block)
    send(tail)
    if chunked:
        conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, json.loads(body)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_300_mb_argument_is_refused_without_the_gateway_holding_it(limited, chunked):
    jobs_before = int(limited.client().get("/jobs").headers["X-Total-Count"])
    before = _peak_rss_mb(limited.proc.pid)
    status, body = _send_streamed(limited.url, limited.admin_token, "/jobs", b'{"command": "true", "arguments": ["',
                                  300 * (1 << 20), b'"]}', chunked)
    assert status == 413, body
    assert "max_body_bytes" in body["error"] and body["limit"] == 1 << 20
    grown = _peak_rss_mb(limited.proc.pid) - before
    print(f"300 MB body ({'chunked' if chunked else 'content-length'}): peak RSS {before:.0f} MB, grew {grown:.1f} MB")
    assert grown < 50, f"the gateway's peak RSS grew by {grown:.0f} MB"
    assert int(limited.client().get("/jobs").headers["X-Total-Count"]) == jobs_before


def _archive(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:  # random bytes: gzip keeps their size
        info = tarfile.TarInfo("data.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return buf.getvalue()


def _upload(client: Client, data: bytes) -> str:
    resp = client.post("/data", params={"filename": "in.tar.gz"}, data=data,
                       headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def _spooled_bytes(schedd, cluster: int) -> tuple[int, int]:
    """Bytes the schedd's spool holds for a cluster's procs (each proc's Iwd, once spooled), and how many procs."""
    from pathlib import Path

    ads = schedd.query(f"ClusterId == {cluster}", ["Iwd"])
    folders = [Path(ad["Iwd"]) for ad in ads]
    return sum(p.stat().st_size for folder in folders for p in folder.rglob("*") if p.is_file()), len(folders)


def test_the_spool_charge_is_what_the_schedd_spools_once_per_item(limited, schedd):
    client = limited.client()
    data_id = _upload(client, _archive(1 << 20))
    before = client.get("/quota").json()["spool_bytes"]
    resp = client.post("/jobs", json={"command": "sleep 60", "input_ids": [data_id], "count": 3, "name": "spooled"})
    try:
        assert resp.status_code == 201, resp.text
        charged = client.get("/quota").json()["spool_bytes"] - before
        spooled, procs = _spooled_bytes(schedd, resp.json()["backend_id"])
        print(f"array of 3 with a 1 MiB input: charged {charged} bytes; the schedd spooled {spooled} in {procs} procs")
        assert procs == 3 and charged >= 3 << 20  # every item its own copy: HTCondor 25 shares none in the spool
        assert spooled == charged
    finally:
        _remove_active(client)


def test_a_100_id_request_over_the_spool_quota_is_refused_before_the_schedd(limited, schedd):
    client = limited.client()
    ids = [_upload(client, _archive(100_000)) for _ in range(100)]  # 100 distinct objects, ~10 MB > the 8 MiB quota
    before = client.get("/quota").json()["spool_bytes"]
    resp = client.post("/jobs", json={"command": "true", "input_ids": ids, "name": "over-quota"})
    assert resp.status_code == 413, resp.text
    assert resp.json()["limit"] == "max_spool_bytes" and resp.json()["spool_bytes"] > 100 * 100_000
    assert not schedd.query('GatewayJobName == "over-quota"', ["ClusterId"])
    assert client.get("/quota").json()["spool_bytes"] <= before  # nothing charged, nothing left held
    twice = client.post("/jobs", json={"command": "true", "input_ids": [ids[0], ids[0]]})
    assert twice.status_code == 400 and twice.json()["repeated"] == [ids[0]]


def _job_files(limited, job_id: str) -> list[str]:
    return sorted(p.name for p in (limited.home / "jobs" / job_id).iterdir())


def test_2000_files_left_in_the_sandbox_do_not_come_back(limited):
    client = limited.client()
    script = 'cd .. && i=0; while [ $i -lt 2000 ]; do echo x > "stray-$i"; i=$((i + 1)); done; echo made'
    resp = client.post("/jobs", json={"command": script, "name": "strays"})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["job_id"]
    job = client.wait_for(job_id, "completed", timeout=180)
    assert job["outputs_ready"]
    files = _job_files(limited, job_id)
    assert not [name for name in files if name.startswith("stray-")], f"{len(files)} files came back"
    assert {"output.tar.gz", "stdout.txt", "stderr.txt"} <= set(files)
    assert client.get(f"/jobs/{job_id}/artifacts/stdout").text.strip() == "made"


def test_output_past_max_output_bytes_is_held_and_not_returned(limited):
    client = limited.client()
    script = 'head -c 3000000 /dev/urandom > "$MODACLOUDS_BATCH_OUTPUT/big.bin"'
    resp = client.post("/jobs", json={"command": script, "name": "too-much-output"})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["job_id"]
    try:
        job = client.wait_for(job_id, "held", timeout=180)
        print(f"held: {job['state_reason']}")
        assert "output.tar.gz" not in _job_files(limited, job_id)
    finally:
        client.post(f"/jobs/{job_id}/remove")
