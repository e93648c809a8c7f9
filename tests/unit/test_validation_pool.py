"""Archive checks on a bounded pool, a per-user limit, and a lower inflation limit for bundles."""

from __future__ import annotations

import io
import tarfile
import threading

import pytest
import requests

from modaclouds_batch.app import build_gateway
from modaclouds_batch.errors import RateLimited
from modaclouds_batch.jobs.validation_pool import ValidationPool
from modaclouds_batch.settings import load_settings

from .apps import admin_client

MB = 1 << 20


def test_one_user_past_the_limit_is_refused_while_another_user_is_served():
    pool = ValidationPool(workers=2, per_user=1)
    started, release = threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(10)
        return "alice's"

    result = {}
    first = threading.Thread(target=lambda: result.setdefault("alice", pool.run("alice", slow)))
    first.start()
    try:
        assert started.wait(5)
        with pytest.raises(RateLimited) as refused:
            pool.run("alice", lambda: "second")
        assert refused.value.details["limit"] == "archive_validations_per_user"
        assert pool.run("bob", lambda: "bob's") == "bob's"
    finally:
        release.set()
        first.join(5)
        pool.shutdown()
    assert result["alice"] == "alice's" and pool.in_flight("alice") == 0


def test_the_checks_run_on_at_most_workers_threads():
    pool = ValidationPool(workers=1, per_user=5)
    names = set()
    threads = [threading.Thread(target=lambda: pool.run(f"u{i}", lambda: names.add(threading.current_thread().name)))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    pool.shutdown()
    assert len(names) == 1 and next(iter(names)).startswith("archive-check")


def _archive(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _post_form(client, files):
    prepared = requests.Request("POST", "http://localhost/jobs", files=files).prepare()
    return client.simulate_post("/jobs", body=prepared.body,
                                headers={"Content-Type": prepared.headers["Content-Type"]})


def test_a_bundle_inflating_past_its_lower_limit_is_413_while_the_same_bytes_pass_as_input(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "max_bundle_unpacked_bytes": MB}, environ={}))
    try:
        client = admin_client(gw)
        big = {"run.sh": b"#!/bin/sh\necho hi\n", "weights.bin": bytes(2 * MB)}
        small = _archive({"run.sh": b"#!/bin/sh\necho hi\n"})
        as_bundle = _post_form(client, {"job-bundle": ("b.tar.gz", _archive(big))})
        assert as_bundle.status_code == 413, as_bundle.text
        assert as_bundle.json["field"] == "job-bundle" and "max_bundle_unpacked_bytes" in as_bundle.json["error"]
        as_input = _post_form(client, {"job-bundle": ("b.tar.gz", small), "job-input": ("i.tar.gz", _archive(big))})
        assert as_input.status_code == 503, as_input.text  # checked and passed; only the absent pool refuses
    finally:
        gw.store.close()


def test_a_data_object_checked_as_an_input_does_not_pass_later_as_an_oversized_bundle(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "max_bundle_unpacked_bytes": MB}, environ={}))
    try:
        client = admin_client(gw)

        def upload(files):
            resp = client.simulate_post("/data", params={"filename": "a.tar.gz"}, body=_archive(files),
                                        headers={"Content-Type": "application/gzip"})
            assert resp.status_code == 201, resp.text
            return resp.json["id"]

        big = upload({"run.sh": b"#!/bin/sh\necho hi\n", "weights.bin": bytes(2 * MB)})
        small = upload({"run.sh": b"#!/bin/sh\necho hi\n"})
        as_input = client.simulate_post("/jobs", json={"bundle_id": small, "input_ids": [big]})
        assert as_input.status_code == 503, as_input.text  # the input passed its check
        as_bundle = client.simulate_post("/jobs", json={"bundle_id": big})
        assert as_bundle.status_code == 413 and "max_bundle_unpacked_bytes" in as_bundle.json["error"], as_bundle.text
    finally:
        gw.store.close()
