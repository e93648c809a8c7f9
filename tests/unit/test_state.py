"""One process per home and database; nothing of another gateway swept; private modes; leftovers go."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from modaclouds_batch import home
from modaclouds_batch.app import build_gateway
from modaclouds_batch.jobs.retention import remove_orphan_dirs
from modaclouds_batch.jobs.tracker import ORPHAN_GRACE_SECONDS, Tracker
from modaclouds_batch.settings import load_settings
from modaclouds_batch.store import Store
from modaclouds_batch.timefmt import now_iso, to_iso

from .apps import admin_client

from .fakes import FakeCondor

REPO = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    """The loosest umask: every mode below must come from the gateway, not from it."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def settings_for(tmp_path: Path, **overrides):
    return load_settings(overrides={"home": tmp_path / "home", **overrides}, environ={})


# --- item 1: one gateway per home and per database ---------------------------------------


HOLDER = textwrap.dedent("""
    import sys, time
    from modaclouds_batch import home
    from modaclouds_batch.settings import load_settings
    claim = home.claim(load_settings(overrides={"home": sys.argv[1], "db_path": sys.argv[2]}, environ={}))
    print("held", flush=True)
    time.sleep(60)
""")


@pytest.fixture
def holder(tmp_path):
    """Another process holding a home and its database."""
    def start(home_dir: Path, db_path: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(home_dir), str(db_path)],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        started.append(proc)
        return proc
    started: list[subprocess.Popen] = []
    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_second_claim_on_the_same_home_names_the_holder(tmp_path, holder):
    proc = holder(tmp_path / "home", tmp_path / "home" / "gateway.db")
    with pytest.raises(home.StateBusy) as caught:
        home.claim(settings_for(tmp_path))
    assert caught.value.holder == proc.pid
    assert f"pid {proc.pid}" in str(caught.value)
    assert str(tmp_path / "home" / ".gateway.lock") in str(caught.value)


def test_a_second_claim_on_the_same_database_from_another_home_is_refused(tmp_path, holder):
    shared_db = tmp_path / "shared.db"
    proc = holder(tmp_path / "first-home", shared_db)
    with pytest.raises(home.StateBusy) as caught:
        home.claim(settings_for(tmp_path, db_path=shared_db))
    assert caught.value.holder == proc.pid
    assert "database" in str(caught.value)
    # The home's lock was given back: a gateway with its own database may use that home.
    home.claim(settings_for(tmp_path)).release()


def test_the_lock_is_free_again_once_the_holder_dies(tmp_path, holder):
    proc = holder(tmp_path / "home", tmp_path / "home" / "gateway.db")
    proc.kill()
    proc.wait()
    home.claim(settings_for(tmp_path)).release()


def test_serve_on_a_busy_home_exits_75_naming_the_pid(tmp_path, holder):
    proc = holder(tmp_path / "home", tmp_path / "home" / "gateway.db")
    done = subprocess.run([sys.executable, "-m", "modaclouds_batch", "--home", str(tmp_path / "home"), "serve",
                           "--port", "1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == home.EXIT_STATE_BUSY == 75
    assert f"pid {proc.pid}" in done.stderr and "error:" in done.stderr


def test_a_busy_home_is_refused_before_the_database_is_touched(tmp_path, holder):
    holder(tmp_path / "home", tmp_path / "other.db")
    target = tmp_path / "home" / "fresh.db"
    with pytest.raises(home.StateBusy):
        from modaclouds_batch.server import run
        run(settings_for(tmp_path, db_path=target))
    assert not target.exists()


# --- item 1: only this gateway's job folders are swept ------------------------------------


def test_start_up_sweeps_only_folders_marked_as_this_instances(tmp_path):
    jobs = tmp_path / "jobs"
    ours, theirs, unmarked, known = (jobs / str(uuid.uuid4()) for _ in range(4))
    for folder in (ours, theirs, unmarked, known):
        folder.mkdir(parents=True)
    home.mark_job_dir(ours, "me")
    home.mark_job_dir(known, "me")
    home.mark_job_dir(theirs, "another-gateway")
    removed = remove_orphan_dirs(jobs, {str(known)}, set(), "me")
    assert removed == 1
    assert not ours.exists()
    assert theirs.exists() and unmarked.exists() and known.exists()


def test_a_staged_job_folder_is_private_and_marked_with_the_instance(tmp_path, open_umask):
    gw = build_gateway(settings_for(tmp_path))
    try:
        with gw.submission.staging() as staging:
            assert mode(staging.path) == 0o700
            assert home.job_dir_owner(staging.path) == gw.store.instance_id
    finally:
        gw.store.close()


def test_the_home_remembers_the_instance_that_served_it(tmp_path):
    assert home.mark_home(tmp_path, "first") is None
    assert home.mark_home(tmp_path, "first") is None
    assert home.mark_home(tmp_path, "second") == "first"
    assert mode(tmp_path / home.MARKER) == 0o600


# --- item 2 and 9: intents, grace, durable inserts ------------------------------------------


def job_row(job_id: str) -> dict:
    now = now_iso()
    return {"id": job_id, "name": "j", "owner": "alice", "state": "idle", "cluster_id": 1, "proc_id": 0,
            "job_dir": "/nonexistent", "arguments": "[]", "created_at": now, "updated_at": now}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def two_processes(tmp_path):
    """Two stores on one database file (two connections, as two processes have) and a
    tracker on the second."""
    path = tmp_path / "shared.db"
    first, second = Store(path), Store(path)
    condor, clock = FakeCondor(), Clock()
    tracker = Tracker(second, condor, interval=60, clock=clock)
    yield SimpleNamespace(first=first, second=second, condor=condor, clock=clock, tracker=tracker)
    first.close()
    second.close()


def queue(world, job_id: str) -> None:
    world.condor.queue[job_id] = {"GatewayJobId": job_id, "ClusterId": 7, "ProcId": 0, "JobStatus": 1}


def test_a_job_another_process_is_submitting_is_not_removed_as_an_orphan(two_processes):
    world = two_processes
    job_id = str(uuid.uuid4())
    world.first.add_intents([job_id], pid=12345)  # written before its schedd submit
    queue(world, job_id)
    for _ in range(3):
        world.clock.now += ORPHAN_GRACE_SECONDS * 2
        assert world.tracker.run_cycle().orphans_removed == 0
    assert job_id in world.condor.queue
    world.first.insert_job(job_row(job_id))  # the job row replaces the intent
    assert world.second.intended([job_id]) == set()
    world.clock.now += ORPHAN_GRACE_SECONDS * 2
    assert world.tracker.run_cycle().orphans_removed == 0
    assert job_id in world.condor.queue


def test_an_orphan_is_removed_only_after_the_grace_period(two_processes):
    world = two_processes
    job_id = str(uuid.uuid4())
    queue(world, job_id)
    assert world.tracker.run_cycle().orphans_removed == 0
    world.clock.now += ORPHAN_GRACE_SECONDS - 1
    assert world.tracker.run_cycle().orphans_removed == 0
    world.clock.now += 1
    assert world.tracker.run_cycle().orphans_removed == 1
    assert job_id not in world.condor.queue


def test_a_dropped_intent_starts_the_grace_period(two_processes):
    world = two_processes
    job_id = str(uuid.uuid4())
    world.first.add_intents([job_id], pid=1)
    queue(world, job_id)
    world.tracker.run_cycle()
    world.first.drop_intents([job_id])  # the submission failed after the schedd took the job
    assert world.tracker.run_cycle().orphans_removed == 0
    world.clock.now += ORPHAN_GRACE_SECONDS
    assert world.tracker.run_cycle().orphans_removed == 1


def test_start_up_clears_intents_a_dead_process_left(tmp_path):
    store = Store(tmp_path / "gw.db")
    store.add_intents(["a", "b"], pid=1)
    assert store.clear_intents() == 2
    assert store.intended(["a", "b"]) == set()


def test_the_job_insert_is_synchronous_full_and_the_rest_normal(tmp_path):
    during = []
    store = Store(tmp_path / "gw.db", on_state_change=lambda job: during.append(
        store.db.execute("PRAGMA synchronous").fetchone()[0]) or [])
    store.insert_job(job_row(str(uuid.uuid4())))
    assert during == [2]  # FULL inside the insert's transaction
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL again


def test_an_intent_is_written_synchronous_full(tmp_path):
    store = Store(tmp_path / "gw.db")
    statements = []
    store.db.conn.set_trace_callback(statements.append)
    store.add_intents(["a"], pid=1)
    full = statements.index("PRAGMA synchronous = FULL")
    assert any("INSERT" in s.upper() and "submission_intents" in s for s in statements[full:])
    assert statements[-1] == "PRAGMA synchronous = NORMAL"


# --- item 7: leftovers ---------------------------------------------------------------------


def test_unfinished_uploads_are_swept_and_data_objects_kept(tmp_path):
    gw = build_gateway(settings_for(tmp_path))
    try:
        client = admin_client(gw)
        kept = client.simulate_post("/data", body=b"keep me", params={"filename": "k.txt"}).json
        leftover = Path(gw.settings.home) / "data" / ".incoming-0b7f"
        leftover.write_bytes(b"half an upload")
        assert gw.service.data.sweep_incoming() == 1
        assert not leftover.exists()
        assert client.simulate_get(f"/data/{kept['id']}").text == "keep me"
    finally:
        gw.store.close()


def answer_world(tmp_path, retention: int):
    gw = build_gateway(settings_for(tmp_path, job_retention_seconds=retention))
    output = tmp_path / "output.tar.gz"
    output.write_bytes(b"the answer")
    return gw, output


def test_an_answer_expires_with_its_job_retention(tmp_path):
    gw, output = answer_world(tmp_path, retention=3600)
    try:
        before = time.time()
        row = gw.service.data.register_file("alice", output, "a", "application/gzip", source_job_id="j")
        expires = time.mktime(time.strptime(row["expires_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert before + 3600 - 5 <= expires <= time.time() + 3600 + 5
        assert mode(row["path"]) == 0o600
    finally:
        gw.store.close()


def test_an_answer_of_a_job_with_a_ttl_expires_with_the_job(tmp_path):
    gw, output = answer_world(tmp_path, retention=3600)
    try:
        soon = to_iso(datetime.now(timezone.utc) + timedelta(seconds=60))
        row = gw.service.data.register_file("alice", output, "a", "application/gzip", source_job_id="j",
                                            job_expires_at=soon)
        assert row["expires_at"] == soon  # the job's ttl comes before its retention
    finally:
        gw.store.close()


def test_without_retention_an_answer_does_not_expire(tmp_path):
    gw, output = answer_world(tmp_path, retention=0)
    try:
        assert gw.service.data.register_file("alice", output, "a", "text/plain", source_job_id="j")["expires_at"] is None
    finally:
        gw.store.close()


def test_an_answer_is_kept_explicitly_by_patching_its_ttl(tmp_path):
    gw, output = answer_world(tmp_path, retention=3600)
    try:
        row = gw.service.data.register_file("anonymous", output, "a", "application/gzip", source_job_id="j")
        gw.store.insert_data(row)
        client = admin_client(gw)
        kept = client.simulate_patch(f"/data/{row['id']}/metadata", json={"ttl": None})
        assert kept.status_code == 200, kept.text
        assert kept.json["expires_at"] is None and gw.store.get_data(row["id"])["expires_at"] is None
        later = client.simulate_patch(f"/data/{row['id']}/metadata", json={"ttl": 60})
        assert later.status_code == 200 and later.json["expires_at"] > now_iso()
        form = client.simulate_patch(f"/data/{row['id']}/metadata", body='{"ttl": 5}',
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert form.status_code == 415 and "application/json" in form.json["error"]
        for body in ({"ttl": 0}, {"ttl": True}, {"ttl": "60"}, {"ttl": 1.5}, {}, {"ttl": 5, "owner": "x"}):
            bad = client.simulate_patch(f"/data/{row['id']}/metadata", json=body)
            assert bad.status_code == 400 and bad.json["field"] == "ttl", (body, bad.text)
    finally:
        gw.store.close()


# --- item 8: private modes whatever the umask -------------------------------------------------


def test_home_folders_and_database_are_private_under_umask_0(tmp_path, open_umask):
    settings = settings_for(tmp_path, pool_dir=tmp_path / "elsewhere")
    claim = home.claim(settings)
    try:
        store = Store(settings.db_path)
        store.insert_job(job_row(str(uuid.uuid4())))
        assert mode(settings.home) == 0o700
        assert mode(settings.jobs_dir) == 0o700
        assert mode(Path(settings.home) / "data") == 0o700
        for suffix in ("", "-wal", "-shm", ".lock"):
            assert mode(f"{settings.db_path}{suffix}") == 0o600, suffix
        assert mode(Path(settings.home) / home.HOME_LOCK) == 0o600
        store.close()
    finally:
        claim.release()


def test_the_home_is_traversable_only_when_the_managed_pool_lives_inside_it(tmp_path, open_umask):
    settings = settings_for(tmp_path)  # pool_dir defaults to <home>/pool, and is managed
    home.prepare(settings)
    assert mode(settings.home) == 0o711
    assert mode(settings.jobs_dir) == 0o700
    external = settings_for(tmp_path, condor_config=tmp_path / "their" / "condor_config")
    home.prepare(external)  # another pool's config: nothing of the pool inside the home
    assert mode(external.home) == 0o700


def test_an_existing_loose_home_is_tightened(tmp_path, open_umask):
    settings = settings_for(tmp_path, pool_dir=tmp_path / "elsewhere")
    Path(settings.home).mkdir(mode=0o777)
    home.prepare(settings)
    assert mode(settings.home) == 0o700


def test_uploads_and_job_files_are_private_under_umask_0(tmp_path, open_umask):
    gw = build_gateway(settings_for(tmp_path))
    try:
        client = admin_client(gw)
        row = client.simulate_post("/data", body=b"data", params={"filename": "d.txt"}).json
        assert mode(gw.store.get_data(row["id"])["path"]) == 0o600
        with gw.submission.staging() as staging:
            staging.receive("job-input", io.BytesIO(b"an upload"))
            assert mode(staging.input_path) == 0o600
            staging.receive_script("#!/bin/sh\necho hi\n")  # tarfile writes it under the umask
            gw.submission._prepare_items(staging, [["a"]], is_array=False)
            files = [p for p in staging.path.rglob("*")]
            assert {p.name for p in files} >= {"bundle.tar.gz", "input.tar.gz", "arguments.sh", home.MARKER}
            assert all(mode(p) == 0o600 for p in files), {p.name: oct(mode(p)) for p in files}
    finally:
        gw.store.close()


def test_restrict_tree_takes_group_and_other_bits_off_outputs(tmp_path, open_umask):
    (tmp_path / "out" / "sub").mkdir(parents=True, mode=0o755)
    (tmp_path / "out" / "stdout").write_text("x")
    os.chmod(tmp_path / "out" / "stdout", 0o644)
    (tmp_path / "out" / "sub" / "run").write_text("x")
    os.chmod(tmp_path / "out" / "sub" / "run", 0o755)
    home.restrict_tree(tmp_path / "out")
    assert mode(tmp_path / "out" / "stdout") == 0o600
    assert mode(tmp_path / "out" / "sub") == 0o700
    assert mode(tmp_path / "out" / "sub" / "run") == 0o700
