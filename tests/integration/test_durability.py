"""Nothing is lost: hostile uploads leave nothing behind, restarts lose no job, a dead schedd is a 503."""

from __future__ import annotations

import gzip
import io
import tarfile
import time

import pytest

from .gateway import GatewayProcess, pack, pack_bundle

pytestmark = pytest.mark.integration


def tar_with(members: list[tarfile.TarInfo], payloads: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        run = tarfile.TarInfo("run.sh")
        script = b"#!/bin/sh\necho hi\n"
        run.size, run.mode = len(script), 0o755
        tar.addfile(run, io.BytesIO(script))
        for info in members:
            data = (payloads or {}).get(info.name, b"")
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def zeros_bomb(megabytes: int) -> bytes:
    """A gzip'd tar whose one member inflates to many zero bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("run.sh")
        info.size = megabytes * 1024 * 1024
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    return gzip.compress(raw.getvalue(), compresslevel=9)


def _run_sh_link() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.addfile(member("run.sh", tarfile.SYMTYPE, "/bin/sh"))
    return buf.getvalue()


HOSTILE_BUNDLES = {
    "absolute path": (tar_with([member("/etc/evil")]), 400, "absolute"),
    "dot-dot": (tar_with([member("../evil")]), 400, ".."),
    "nested dot-dot": (tar_with([member("a/../../evil")]), 400, ".."),
    "symlink outside": (tar_with([member("passwd", tarfile.SYMTYPE, "/etc/passwd")]), 400, "passwd"),
    "relative symlink outside": (tar_with([member("up", tarfile.SYMTYPE, "../../x")]), 400, "up"),
    "hardlink outside": (tar_with([member("h", tarfile.LNKTYPE, "../x")]), 400, "h"),
    "device file": (tar_with([member("dev", tarfile.CHRTYPE)]), 400, "dev"),
    "fifo": (tar_with([member("pipe", tarfile.FIFOTYPE)]), 400, "pipe"),
    "not gzip": (b"just some text, not an archive", 400, "gzip"),
    "gzip but not tar": (gzip.compress(b"hello" * 1000), 400, "tar"),
    "no run.sh": (pack(None, {"other.sh": b"echo\n"}), 400, "run.sh"),
    "run.sh is a link": (_run_sh_link(), 400, "run.sh"),
}


def assert_nothing_left(gateway, client, before_dirs, before_total):
    assert sorted(p.name for p in (gateway.home / "jobs").iterdir()) == before_dirs
    assert client.get("/jobs").headers["X-Total-Count"] == before_total


@pytest.mark.parametrize("case", sorted(HOSTILE_BUNDLES))
def test_hostile_bundle_is_refused_and_leaves_nothing(gateway, client, condor_queue, case):
    archive, status, needle = HOSTILE_BUNDLES[case]
    (gateway.home / "jobs").mkdir(exist_ok=True)
    before_dirs = sorted(p.name for p in (gateway.home / "jobs").iterdir())
    before_total = client.get("/jobs").headers["X-Total-Count"]
    before_queue = condor_queue()

    resp = client.submit(archive, name=f"hostile {case}")
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["error"]
    assert resp.json().get("field") == "job-bundle"
    assert_nothing_left(gateway, client, before_dirs, before_total)
    assert condor_queue() == before_queue


def test_hostile_input_is_refused_too(gateway, client):
    resp = client.submit(pack_bundle("hello"), input_archive=tar_with([member("../../x")]))
    assert resp.status_code == 400
    assert resp.json()["field"] == "job-input"


def test_a_link_of_the_bundle_cannot_be_followed_by_the_input(gateway, client, condor_queue):
    # Each archive alone is fine; unpacked one after the other, d/passwd would be written through d.
    bundle = tar_with([member("sub", tarfile.DIRTYPE), member("d", tarfile.SYMTYPE, "sub")])
    chained = tar_with([member("d/passwd")], {"d/passwd": b"root::0:0::/:/bin/sh\n"})
    (gateway.home / "jobs").mkdir(exist_ok=True)
    before_dirs = sorted(p.name for p in (gateway.home / "jobs").iterdir())
    before_total, before_queue = client.get("/jobs").headers["X-Total-Count"], condor_queue()
    resp = client.submit(bundle, name="hostile chain", input_archive=chained)
    assert resp.status_code == 400, resp.text
    assert resp.json()["field"] == "job-input" and "which is a symlink (from job-bundle)" in resp.json()["error"]
    assert_nothing_left(gateway, client, before_dirs, before_total)
    assert condor_queue() == before_queue


def test_decompression_bomb_is_refused_with_413(small_limits_gateway):
    gateway, client = small_limits_gateway
    before = sorted(p.name for p in (gateway.home / "jobs").iterdir()) if (gateway.home / "jobs").exists() else []
    resp = client.submit(zeros_bomb(64))  # 64 MB of zeros against an 8 MB unpacked limit
    assert resp.status_code == 413, resp.text
    assert "limit" in resp.json()["error"]
    after = sorted(p.name for p in (gateway.home / "jobs").iterdir()) if (gateway.home / "jobs").exists() else []
    assert after == before


def test_oversize_upload_is_refused_with_413(small_limits_gateway):
    gateway, client = small_limits_gateway
    big = pack(None, {"run.sh": b"#!/bin/sh\n", "blob": bytes(range(256)) * 40_000})  # ~10 MB, incompressible-ish
    resp = client.submit(big)
    assert resp.status_code == 413


def test_malformed_requests_get_json_errors(client):
    assert client.post("/jobs", data=b"x", headers={"Content-Type": "text/plain"}).status_code == 415
    unknown_key = client.post("/jobs", json={"x": 1})
    assert unknown_key.status_code == 400 and "'x'" in unknown_key.json()["error"]
    missing = client.post("/jobs", files={"job-name": (None, "x")})
    assert missing.status_code == 400 and "job-bundle is required" in missing.json()["error"]
    unknown = client.post("/jobs", files={"job-bundel": ("b.tgz", b"x")})
    assert unknown.status_code == 400 and "job-bundel" in unknown.json()["error"]
    quotes = client.submit(pack_bundle("hello"), arguments="unbalanced 'quote")
    assert quotes.status_code == 400 and quotes.json()["field"] == "job-arguments"
    url = client.submit(pack_bundle("hello"), notify="ftp://example.org/hook")
    assert url.status_code == 400 and url.json()["field"] == "job-notification"
    route = client.get("/nowhere")
    assert route.status_code == 404 and "error" in route.json()


def test_gateway_killed_while_jobs_run_loses_nothing(tmp_path, condor_config):
    gateway = GatewayProcess(tmp_path / "restart-home", condor_config).start()
    client = gateway.client()
    try:
        ids = [client.submit(pack_bundle("sleeper"), name=f"survivor-{i}", arguments="8").json()["job_id"] for i in range(3)]
        client.wait_for(ids[0], {"running", "completed"}, timeout=90)
        gateway.kill()
        time.sleep(10)  # the jobs finish while nobody watches
        gateway.start()
        for job_id in ids:
            job = client.wait_for(job_id, {"completed", "failed"}, timeout=120)
            assert job["job_status"] == "completed", job
            stdout = client.get(f"/jobs/{job_id}/artifacts/stdout")
            assert stdout.status_code == 200 and "tick" in stdout.text
    finally:
        gateway.stop()


def test_schedd_unreachable_means_503_with_retry_after_and_reads_still_work(tmp_path, condor_config):
    gateway = GatewayProcess(tmp_path / "home-down", condor_config).start()
    client = gateway.client()
    job_id = client.submit(pack_bundle("hello"), name="before-outage").json()["job_id"]
    gateway.stop()
    # The same gateway state, pointed at a pool that does not answer.
    dead = tmp_path / "dead_condor_config"
    dead.write_text(condor_config.read_text() + "\nCONDOR_HOST = 127.0.0.1:1\nCOLLECTOR_HOST = 127.0.0.1:1\n")
    down = GatewayProcess(tmp_path / "home-down", dead).start()
    try:
        client = down.client()
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["schedd"]["ok"] is False
        resp = client.submit(pack_bundle("hello"), name="during-outage")
        assert resp.status_code == 503, resp.text
        assert int(resp.headers["Retry-After"]) > 0
        assert "retry" in resp.json()["error"]
        assert client.get(f"/jobs/{job_id}").status_code == 200
        assert client.get("/jobs").headers["X-Total-Count"] == "1"
        assert sorted(p.name for p in (down.home / "jobs").iterdir()) == [job_id]
    finally:
        down.stop()


def test_a_pool_restart_loses_no_queued_job(client, pool):
    """The schedd keeps its queue across a restart and the gateway reconnects to it.

    (A job *running* during a fast shutdown stays Running while the schedd tries to
    reconnect to it for the job lease, by HTCondor's design; so this holds the job.)
    """
    from modaclouds_batch.condor import pool as pool_tooling

    job_id = client.submit(pack_bundle("sleeper"), name="survives-schedd-restart", arguments="3").json()["job_id"]
    assert client.post(f"/jobs/{job_id}/hold").status_code == 202
    client.wait_for(job_id, "held", timeout=60)
    pool_tooling.down(pool, log=lambda line: None)
    assert client.get("/health").status_code == 503
    assert client.get(f"/jobs/{job_id}").json()["job_status"] == "held"  # reads come from the store
    pool_tooling.up(pool, log=lambda line: None)
    assert client.get("/health").status_code == 200
    assert client.post(f"/jobs/{job_id}/release").status_code == 202
    job = client.wait_for(job_id, {"completed", "failed"}, timeout=180)
    assert job["job_status"] == "completed", job
    output = client.get(f"/jobs/{job_id}/artifacts/output")
    with tarfile.open(fileobj=io.BytesIO(output.content), mode="r:gz") as tar:
        assert tar.extractfile("./slept.txt").read().decode().strip() == "slept 3 seconds"
