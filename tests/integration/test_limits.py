"""Limits a request cannot get around, on the real pool (issue 11, items 3, 4 and 6)."""

from __future__ import annotations

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
