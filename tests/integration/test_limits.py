"""Limits a request cannot get around, on the real pool (issue 11, items 3, 4 and 6)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .fixtures import GATEWAY_ENV
from .gateway import Client, GatewayProcess

pytestmark = pytest.mark.integration

ACTIVE = ["idle", "running", "held", "suspended"]


@pytest.fixture(scope="module")
def limited(tmp_path_factory, condor_config):
    """A gateway with a small active-jobs limit; whatever a test leaves queued is removed."""
    env = {**GATEWAY_ENV, "MODACLOUDS_BATCH_MAX_ACTIVE_JOBS_PER_USER": "3"}
    process = GatewayProcess(tmp_path_factory.mktemp("limited"), condor_config, env=env).start()
    yield process
    try:
        _remove_active(Client(process.url))
    finally:
        process.stop()


def _remove_active(client: Client) -> None:
    for job in client.get("/jobs", params={"status": ACTIVE}).json():
        client.post(f"/jobs/{job['id']}/remove")


def test_16_concurrent_submissions_accept_exactly_max_active_jobs(limited):
    client = Client(limited.url)

    def submit(index: int) -> requests.Response:
        return requests.post(limited.url + "/jobs", json={"command": "sleep 60", "name": f"race-{index}"}, timeout=120)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(submit, range(16)))
    try:
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [201] * 3 + [429] * 13, [a.text for a in answers if a.status_code not in (201, 429)]
        assert all(a.json()["limit"] == "max_active_jobs" for a in answers if a.status_code == 429)
        assert int(client.get("/jobs").headers["X-Total-Count"]) == 3
        assert client.get("/quota").json()["active_jobs"] == 3
    finally:
        _remove_active(client)


def _peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _send_streamed(url: str, path: str, head: bytes, size: int, tail: bytes, chunked: bool) -> tuple[int, dict]:
    """POST a JSON body of ``size`` filler bytes without ever holding it: 1 MiB at a time."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
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
    jobs_before = int(Client(limited.url).get("/jobs").headers["X-Total-Count"])
    before = _peak_rss_mb(limited.proc.pid)
    status, body = _send_streamed(limited.url, "/jobs", b'{"command": "true", "arguments": ["',
                                  300 * (1 << 20), b'"]}', chunked)
    assert status == 413, body
    assert "max_body_bytes" in body["error"] and body["limit"] == 1 << 20
    grown = _peak_rss_mb(limited.proc.pid) - before
    print(f"300 MB body ({'chunked' if chunked else 'content-length'}): peak RSS {before:.0f} MB, grew {grown:.1f} MB")
    assert grown < 50, f"the gateway's peak RSS grew by {grown:.0f} MB"
    assert int(Client(limited.url).get("/jobs").headers["X-Total-Count"]) == jobs_before
