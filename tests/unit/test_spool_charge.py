"""Inputs cost spool: few data ids, each once, charged size x items against a quota (issue 11, item 3)."""

import io
import os
import tarfile

import pytest

from modaclouds_batch.app import build_gateway
from modaclouds_batch.settings import load_settings
from modaclouds_batch.store import JobChange

from .apps import admin_client
from .fakes import FakeCondor, use_condor


def archive(size: int, name: str = "data.bin") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:  # random bytes: gzip keeps their size
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return buf.getvalue()


@pytest.fixture
def gateway(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "max_input_ids": 5,
                                                "max_spool_bytes_per_user": 1 << 20}, environ={}))
    use_condor(gw, FakeCondor())
    yield gw
    gw.store.close()


@pytest.fixture
def client(gateway):
    return admin_client(gateway)


def upload(client, size: int) -> str:
    resp = client.simulate_post("/data", params={"filename": "in.tar.gz"}, body=archive(size),
                                headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 201, resp.text
    return resp.json["id"]


def test_more_data_ids_than_max_input_ids_are_refused(client, gateway):
    ids = [upload(client, 100) for _ in range(6)]
    resp = client.simulate_post("/jobs", json={"command": "true", "input_ids": ids})
    assert resp.status_code == 413, resp.text
    assert resp.json["field"] == "job-input-ids" and resp.json["limit"] == 5
    assert gateway.condor.round_trips == 0


@pytest.mark.parametrize("key, field", [("input_ids", "job-input-ids"), ("input_files", "input_files")])
def test_a_data_id_named_twice_is_refused(client, key, field):
    data_id = upload(client, 100)
    resp = client.simulate_post("/jobs", json={"command": "true", key: [data_id, data_id]})
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == field and resp.json["repeated"] == [data_id]


def test_an_array_is_charged_its_input_once_per_item(client, gateway):
    data_id = upload(client, 100_000)  # ~100 KB; 20 items would spool ~2 MB > the 1 MiB quota
    resp = client.simulate_post("/jobs", json={"command": "true", "input_ids": [data_id], "count": 20})
    assert resp.status_code == 413, resp.text
    assert resp.json["limit"] == "max_spool_bytes" and resp.json["spool_bytes"] > 20 * 100_000
    assert gateway.condor.round_trips == 0 and gateway.store.count_jobs() == 0


def test_the_spool_held_by_active_jobs_counts_until_they_end(client, gateway):
    data_id = upload(client, 300_000)
    assert client.simulate_post("/jobs", json={"command": "true", "input_ids": [data_id], "count": 3}).status_code == 201
    quota = client.simulate_get("/quota").json
    assert 900_000 < quota["spool_bytes"] < 1 << 20 and quota["limits"]["max_spool_bytes"] == 1 << 20
    resp = client.simulate_post("/jobs", json={"command": "true", "input_ids": [data_id]})
    assert resp.status_code == 429, resp.text
    assert resp.json["limit"] == "max_spool_bytes" and resp.headers["retry-after"]
    gateway.store.apply_job_changes(  # as the tracker records them once they end
        [JobChange(job["id"], {}, "completed", "done") for job in client.simulate_get("/jobs").json])
    assert client.simulate_post("/jobs", json={"command": "true", "input_ids": [data_id]}).status_code == 201


def test_an_admin_raises_a_users_spool_quota(client, gateway):
    data_id = upload(client, 100_000)
    assert client.simulate_put("/users/admin/limits", json={"max_spool_bytes": 10 << 20}).status_code == 200
    assert client.simulate_post("/jobs", json={"command": "true", "input_ids": [data_id], "count": 20}).status_code == 201
