"""Concurrent submissions cannot together overshoot max_active_jobs (issue 11, item 6)."""

import threading

import pytest

from modaclouds_batch.app import build_gateway
from modaclouds_batch.settings import load_settings

from .apps import admin_client
from .fakes import FakeCondor, use_condor


@pytest.fixture
def gateway(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "max_active_jobs_per_user": 3}, environ={}))
    use_condor(gw, FakeCondor())
    gw.condor.submit_delay = 0.05  # the window a submission spends in the schedd
    yield gw
    gw.store.close()


def test_16_concurrent_submissions_accept_exactly_the_limit(gateway):
    client = admin_client(gateway)
    start = threading.Barrier(16)
    statuses = []

    def submit():
        start.wait()
        statuses.append(client.simulate_post("/jobs", json={"command": "true"}).status_code)

    threads = [threading.Thread(target=submit) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] * 3 + [429] * 13
    assert gateway.store.count_jobs() == 3
    assert gateway.condor.clusters == 3  # the refused ones never reached the schedd
    assert gateway.store.usage("admin", ["idle"], "")["charged_jobs"] == 0


def test_a_failed_submission_gives_its_place_back(gateway):
    client = admin_client(gateway)
    gateway.condor.fail.add("submit")
    for _ in range(4):
        assert client.simulate_post("/jobs", json={"command": "true"}).status_code == 503
    gateway.condor.fail.clear()
    assert [client.simulate_post("/jobs", json={"command": "true"}).status_code for _ in range(4)] == [201] * 3 + [429]
    assert client.simulate_get("/quota").json["active_jobs"] == 3


def test_an_array_is_charged_all_its_items(gateway):
    client = admin_client(gateway)
    assert client.simulate_post("/jobs", json={"command": "true", "count": 2}).status_code == 201
    resp = client.simulate_post("/jobs", json={"command": "true", "count": 2})
    assert resp.status_code == 429 and resp.json["limit"] == "max_active_jobs"
