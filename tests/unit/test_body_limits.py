"""Bodies that are not file uploads, and a job's arguments, are bounded (issue 11, item 4)."""

import json
import uuid

import pytest

from modaclouds_batch.app import build_gateway
from modaclouds_batch.settings import load_settings
from modaclouds_batch.store import JobFilter, Store

from .apps import admin_client
from .fakes import FakeCondor, use_condor

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def gateway(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "max_arguments": 100,
                                                "max_argument_bytes": 1000,
                                                "max_active_jobs_per_user": 5000}, environ={}))
    use_condor(gw, FakeCondor())
    yield gw
    gw.store.close()


@pytest.fixture
def client(gateway):
    return admin_client(gateway)


def test_a_json_body_past_max_body_bytes_is_413(client, gateway):
    body = json.dumps({"command": "true", "name": "x" * (1 << 20)}).encode()
    resp = client.simulate_post("/jobs", body=body, headers=JSON)
    assert resp.status_code == 413, resp.text
    assert resp.json["limit"] == 1 << 20 and "max_body_bytes" in resp.json["error"]
    assert gateway.store.count_jobs() == 0


def test_a_declared_length_past_the_cap_is_refused_before_reading(client):
    # 300 MB announced, a few bytes sent: the answer comes from the Content-Length alone.
    resp = client.simulate_post("/tokens", body=b'{"owner": "alice"}',
                                headers={**JSON, "Content-Length": str(300 * 1024 * 1024)})
    assert resp.status_code == 413, resp.text


def test_an_urlencoded_body_past_the_cap_is_413(client):
    body = b"job-bundle=echo&job-name=" + b"x" * (1 << 20)
    resp = client.simulate_post("/jobs", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 413, resp.text


@pytest.mark.parametrize("body, field", [
    ({"command": "true", "arguments": ["a"] * 101}, "job-arguments"),  # more words than max_arguments
    ({"command": "true", "arguments": ["x" * 600, "y" * 600]}, "job-arguments"),  # list over max_argument_bytes
    ({"command": "true", "arguments": "x" * 1001}, "job-arguments"),  # string over it
    ({"command": "x" * 1001}, "command"),
    ({"command": "true", "array": [["a"] * 101]}, "job-array"),
    ({"command": "true", "count": 2000, "arguments": ["x" * 900]}, "job-array"),  # 1.8 MB stored over the items
])
def test_arguments_past_their_limits_are_413_naming_the_field(client, gateway, body, field):
    resp = client.simulate_post("/jobs", json=body)
    assert resp.status_code == 413, resp.text
    assert resp.json["field"] == field
    assert gateway.store.count_jobs() == 0


def test_arguments_within_the_limits_are_queued(client, gateway):
    resp = client.simulate_post("/jobs", json={"command": "true", "arguments": ["a"] * 100})
    assert resp.status_code == 201, resp.text
    assert resp.json["arguments"] == ["a"] * 100


def test_lists_and_the_tracker_do_not_read_the_arguments(tmp_path):
    store = Store(tmp_path / "db")
    at = "2026-01-01T00:00:00.000000Z"
    store.insert_job({"id": str(uuid.uuid4()), "name": "big", "owner": "alice", "state": "idle", "kind": "command",
                      "arguments": json.dumps(["x" * 1000]), "command": "true", "created_at": at, "updated_at": at})
    page, _, _ = store.list_jobs(JobFilter(), 10, None)
    assert "arguments" not in page[0] and "command" not in page[0] and page[0]["name"] == "big"
    tracked = store.active_jobs(["idle"])
    assert "arguments" not in tracked[0] and tracked[0]["kind"] == "command"
    assert store.get_job(page[0]["id"])["arguments"] == ["x" * 1000]
