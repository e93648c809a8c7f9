"""The infrastructure API on the real pool: see it, extend it, drain it, retire what was added."""

from __future__ import annotations

import time

import pytest

from tests.polling import until

from .gateway import pack_bundle

pytestmark = pytest.mark.integration

RUNTIME_PROBE = b"#!/bin/sh\necho ran on $(hostname)\n"


def wait(predicate, timeout=90.0, what="condition"):
    return until(predicate, timeout, what, every=1)


def test_pool_summary_and_workers_come_from_the_collector(client):
    pool = client.get("/pool")
    assert pool.status_code == 200, pool.text
    summary = pool.json()
    assert summary["workers"] >= 1 and summary["cpus"]["total"] >= 1
    assert {"bash", "python3"} <= set(summary["runtimes"])
    workers = client.get("/workers").json()
    main = next(w for w in workers if not w["managed_by_gateway"])
    assert main["slots"] and {"bash", "python3"} <= set(main["runtimes"])
    one = client.get(f"/workers/{main['name']}")
    assert one.status_code == 200 and one.json()["name"] == main["name"]
    assert client.get("/workers/no-such-worker@nowhere").status_code == 404


def test_a_runtime_nobody_offers_is_refused_with_what_exists(client):
    resp = client.submit(pack_bundle("hello"), name="fortran", **{"job-runtime": "fortran77"})
    assert resp.status_code == 400
    assert "python3" in resp.json()["error"] and "python3" in resp.json()["available"]
    waiting = client.submit(pack_bundle("hello"), name="fortran-wait",
                            **{"job-runtime": "fortran77", "job-runtime-wait": "true"})
    assert waiting.status_code == 201
    time.sleep(8)
    assert client.job(waiting.json()["job_id"])["job_status"] == "idle"
    client.post(f"/jobs/{waiting.json()['job_id']}/remove")


@pytest.fixture(scope="module")
def added_worker(gateway):
    client = gateway.client()
    resp = client.post("/workers", json={"provider": "local", "params": {"cpus": 2, "runtimes": ["bash", "julia"]}})
    assert resp.status_code == 202, resp.text
    request_id = resp.json()["id"]

    def ready():
        record = next(r for r in client.get("/workers/requests").json() if r["id"] == request_id)
        assert record["status"] != "failed", record
        return record if record["status"] == "ready" else None

    record = wait(ready, timeout=120, what="the local worker to start")
    yield record["worker"]
    client.http.delete(f"{client.url}/workers/{record['worker']}")


def test_an_added_worker_appears_and_runs_the_jobs_that_need_it(client, added_worker):
    worker = client.get(f"/workers/{added_worker}").json()
    assert worker["managed_by_gateway"] and worker["provider"] == "local"
    assert "julia" in worker["runtimes"] and worker["cpus_total"] == 2
    job_id = client.submit(pack_bundle("hello"), name="needs-julia", **{"job-runtime": "julia"}).json()["job_id"]
    job = client.wait_for(job_id, "completed", timeout=180)
    assert added_worker in job["remote_host"]
    assert job["runtime"] == "julia"


def test_a_drained_worker_starts_no_new_job_until_undrained(client, added_worker):
    resp = client.post(f"/workers/{added_worker}/drain", json={"how": "quick"})
    assert resp.status_code == 202, resp.text
    wait(lambda: client.get(f"/workers/{added_worker}").json()["draining"], 30, "drain to show")
    assert client.post(f"/workers/{added_worker}/drain").status_code == 409
    job_id = client.submit(pack_bundle("hello"), name="julia-while-drained", **{"job-runtime": "julia"}).json()["job_id"]
    time.sleep(10)
    assert client.job(job_id)["job_status"] == "idle"
    assert client.post(f"/workers/{added_worker}/undrain").status_code == 202
    assert client.wait_for(job_id, "completed", timeout=120)["job_status"] == "completed"


def test_retiring_an_added_worker_removes_it(client, gateway):
    resp = client.post("/workers", json={"provider": "local", "params": {"cpus": 1}})
    request_id = resp.json()["id"]
    record = wait(lambda: next((r for r in client.get("/workers/requests").json()
                                if r["id"] == request_id and r["status"] == "ready"), None), 120, "worker start")
    name = record["worker"]
    retire = client.http.delete(f"{client.url}/workers/{name}")
    assert retire.status_code == 202
    wait(lambda: client.get(f"/workers/{name}").status_code == 404, 90, "worker to leave the pool")
    main = next(w["name"] for w in client.get("/workers").json() if not w["managed_by_gateway"])
    refused = client.http.delete(f"{client.url}/workers/{main}")
    assert refused.status_code == 409 and "not started by the gateway" in refused.json()["error"]


def worker(client, name):
    resp = client.get(f"/workers/{name}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_draining_localhost_drains_that_worker_and_not_one_whose_name_ends_with_it(client, added_worker):
    main = next(w["name"] for w in client.get("/workers").json() if not w["managed_by_gateway"])
    assert added_worker.endswith(f"@{main}")  # localhost and exec-...@localhost: the case that went wrong
    try:
        drained = client.post(f"/workers/{main}/drain", json={"how": "graceful"})

        assert drained.status_code == 202, drained.text
        assert drained.json()["name"] == main and drained.json()["draining"] is True
        assert worker(client, main)["draining"] is True
        assert worker(client, added_worker)["draining"] is False
        listed = {w["name"]: w["draining"] for w in client.get("/workers").json()}
        assert listed[main] is True and listed[added_worker] is False  # at once, not after the collector
        again = client.post(f"/workers/{main}/drain", json={"how": "graceful"})
        assert again.status_code == 409 and "already" in again.json()["error"]
        undrained = client.post(f"/workers/{main}/undrain")  # right after the 202, no waiting
        assert undrained.status_code == 202, undrained.text
        assert undrained.json()["draining"] is False
    finally:
        if worker(client, main)["draining"]:
            client.post(f"/workers/{main}/undrain")
    assert worker(client, added_worker)["draining"] is False


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "application/x-www-form-urlencoded"}])
def test_a_drain_body_that_is_not_json_is_refused_and_nothing_drains(client, added_worker, headers):
    resp = client.post(f"/workers/{added_worker}/drain", data='{"how": "bogus"}', headers=headers)

    assert resp.status_code == 415, resp.text
    assert "application/json" in resp.json()["error"]
    assert worker(client, added_worker)["draining"] is False
    assert client.post(f"/workers/{added_worker}/drain", json={"how": "bogus"}).status_code == 400


def test_an_added_worker_a_pool_restart_stopped_is_marked_lost(tmp_path, pool, condor_config):
    """Stopping the node's master is what a pool restart does to the nodes the gateway
    added (`up` brings back only the main node); the record must not stay 'ready'."""
    from modaclouds_batch.condor.pool import nodes as pool_nodes

    from .fixtures import GATEWAY_ENV
    from .gateway import GatewayProcess

    env = {**GATEWAY_ENV, "MODACLOUDS_BATCH_POOL_DIR": str(pool.pool_dir),
           "MODACLOUDS_BATCH_COLLECTOR_PORT": str(pool.collector_port),
           "MODACLOUDS_BATCH_SCHEDD_PORT": str(pool.schedd_port),
           "MODACLOUDS_BATCH_WORKER_LOST_AFTER": "8"}
    gateway = GatewayProcess(tmp_path / "gateway", condor_config, env=env).start()
    client = gateway.client()
    started: list[str] = []

    def add_worker() -> dict:
        request_id = client.post("/workers", json={"provider": "local", "params": {"cpus": 1}}).json()["id"]
        record = wait(lambda: next((r for r in client.get("/workers/requests").json()
                                    if r["id"] == request_id and r["status"] in ("ready", "failed")), None),
                      120, "worker start")
        assert record["status"] == "ready", record
        started.append(record["worker"].split("@", 1)[0])
        return record

    def status(record) -> dict:
        return next(r for r in client.get("/workers/requests").json() if r["id"] == record["id"])

    try:
        # While the gateway runs: gone from the collector for worker_lost_after seconds.
        first = add_worker()
        pool_nodes.remove_execute_node(pool, started[0], log=lambda line: None)
        lost = wait(lambda: status(first) if status(first)["status"] == "lost" else None, 60, "the record to say lost")
        assert lost["lost_at"] and "missing from the collector" in lost["error"]
        assert client.get(f"/workers/{first['worker']}").status_code == 404

        # While the gateway was stopped: at start, the local node not running settles it at once.
        second = add_worker()
        gateway.stop()
        pool_nodes.remove_execute_node(pool, started[1], log=lambda line: None)
        gateway.start()
        at_start = status(second)
        assert at_start["status"] == "lost", at_start
        assert "not running" in at_start["error"]
    finally:
        gateway.stop()
        for node in started:
            pool_nodes.remove_execute_node(pool, node, log=lambda line: None)
