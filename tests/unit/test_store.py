import re
import uuid

import pytest

from sqlite_utils import Database

from modaclouds_batch.store import JobFilter, Store, decode_cursor


def make_job(store, i, state="idle", name="job"):
    at = f"2026-01-01T00:00:{i:02d}.000000Z"
    job_id = str(uuid.uuid4())
    store.insert_job({"id": job_id, "name": f"{name}{i}", "owner": "alice", "state": state,
                      "arguments": "[]", "created_at": at, "updated_at": at})
    return job_id


def test_pages_walk_all_jobs_newest_first_without_overlap(tmp_path):
    store = Store(tmp_path / "db")
    ids = [make_job(store, i) for i in range(25)]
    seen, cursor = [], None
    while True:
        page, cursor, total = store.list_jobs(JobFilter(), 10, cursor)
        seen += [j["id"] for j in page]
        assert total == 25
        if not cursor:
            break
    assert seen == list(reversed(ids))


def test_filters_by_state_name_and_time(tmp_path):
    store = Store(tmp_path / "db")
    make_job(store, 1, state="completed", name="alpha")
    make_job(store, 2, state="idle", name="alpha")
    make_job(store, 3, state="completed", name="beta")
    page, _, _ = store.list_jobs(JobFilter(states=("completed",), name_glob="alpha*"), 10, None)
    assert [j["name"] for j in page] == ["alpha1"]
    page, _, _ = store.list_jobs(JobFilter(created_after="2026-01-01T00:00:02.000000Z"), 10, None)
    assert [j["name"] for j in page] == ["beta3", "alpha2"]


def test_instance_id_survives_reopening(tmp_path):
    first = Store(tmp_path / "db").instance_id
    assert Store(tmp_path / "db").instance_id == first


def test_forged_cursor_is_refused():
    with pytest.raises(ValueError):
        decode_cursor("not-a-cursor!")


def test_every_migration_function_is_registered():
    """A merge can drop the @migrations() line above a migration; it would then never run."""
    import inspect

    from modaclouds_batch.store import migrations as store  # the schema's module

    defined = [name for name, fn in inspect.getmembers(store, inspect.isfunction)
               if fn.__module__ == store.__name__ and re.match(r"m\d{3}_", name)]
    registered = [m.name for m in store.migrations._migrations]
    assert sorted(defined) == sorted(registered) and len(registered) == len(set(registered))


def _tallies(store):
    return {(o, s): n for o, s, n in store.db.execute("select owner, state, n from job_tallies where n != 0")}


def _counted(store):
    return {(o, s): n for o, s, n in store.db.execute(
        "select owner, state, count(*) from jobs where expired_at is null group by owner, state")}


def test_job_tallies_follow_every_kind_of_job_write(tmp_path):
    """The triggers keep job_tallies equal to a count of the jobs, whichever way a job changes."""
    from modaclouds_batch.store import JobChange

    store = Store(tmp_path / "db")
    ids = [make_job(store, i) for i in range(6)]
    store.insert_job({"id": str(uuid.uuid4()), "name": "b", "owner": "bob", "state": "idle",
                      "arguments": "[]", "created_at": "2026-01-01T00:01:00.000000Z",
                      "updated_at": "2026-01-01T00:01:00.000000Z"})
    store.apply_job_changes([JobChange(ids[0], new_state="running", reason="r"),
                             JobChange(ids[1], new_state="completed", reason="c"),
                             JobChange(ids[2], fields={"remote_host": "slot1@x"})])
    store.mark_expired(ids[3], "2026-01-02T00:00:00.000000Z")
    store.delete_job(ids[4])
    assert _tallies(store) == _counted(store) == {("alice", "idle"): 2, ("alice", "running"): 1,
                                                   ("alice", "completed"): 1, ("bob", "idle"): 1}
    assert store.list_jobs(JobFilter(owner="alice"), 10, None)[2] == 4
    assert store.list_jobs(JobFilter(owner="alice", states=("idle", "running")), 10, None)[2] == 3
    assert store.list_jobs(JobFilter(states=("idle",)), 10, None)[2] == 3
    # Filters the tallies do not know are still counted from the jobs themselves.
    assert store.list_jobs(JobFilter(owner="alice", name_glob="job5"), 10, None)[2] == 1
    assert store.count_by_state() == {"idle": 3, "running": 1, "completed": 1}


def test_job_tallies_count_the_jobs_a_store_had_before_they_existed(tmp_path):
    from modaclouds_batch.store import migrations as store_module

    db = Database(tmp_path / "db")
    store_module.migrations.apply(db, stop_before="m024_job_tallies")
    for i, state in enumerate(["idle", "idle", "completed"]):
        db["jobs"].insert({"id": str(uuid.uuid4()), "name": f"j{i}", "owner": "alice", "state": state,
                           "created_at": f"2026-01-01T00:00:0{i}.000000Z", "updated_at": "x"})
    db["jobs"].insert({"id": str(uuid.uuid4()), "name": "gone", "owner": "alice", "state": "idle",
                       "created_at": "2026-01-01T00:00:09.000000Z", "updated_at": "x", "expired_at": "y"})
    db.close()
    store = Store(tmp_path / "db")
    assert _tallies(store) == {("alice", "idle"): 2, ("alice", "completed"): 1}
    assert store.list_jobs(JobFilter(owner="alice"), 10, None)[2] == 3


def _spool_tallies(store):
    return {(o, s): b for o, s, b in store.db.execute(
        "select owner, state, spool_bytes from job_tallies where n != 0")}


def _spool_summed(store):
    return {(o, s): b for o, s, b in store.db.execute(
        "select owner, state, coalesce(sum(spool_bytes), 0) from jobs where expired_at is null group by owner, state")}


def test_job_tallies_sum_spool_bytes_through_every_kind_of_job_write(tmp_path):
    from modaclouds_batch.store import JobChange

    store = Store(tmp_path / "db")
    ids = [str(uuid.uuid4()) for _ in range(5)]
    store.insert_jobs([{"id": job_id, "name": "j", "owner": "alice", "state": "idle", "arguments": "[]",
                        "created_at": "2026-01-01T00:00:00.000000Z", "updated_at": "x", "spool_bytes": 10 * (i + 1)}
                       for i, job_id in enumerate(ids)])
    make_job(store, 9)  # no spool_bytes (a job recorded before they were)
    store.apply_job_changes([JobChange(ids[0], new_state="running", reason="r"),
                             JobChange(ids[1], new_state="completed", reason="c"),
                             JobChange(ids[2], fields={"spool_bytes": 7})])
    store.mark_expired(ids[1], "2026-01-02T00:00:00.000000Z")
    store.delete_job(ids[3])
    assert _spool_tallies(store) == _spool_summed(store) == {("alice", "idle"): 7 + 50, ("alice", "running"): 10}


def test_job_spool_tallies_sum_the_jobs_a_store_had_before_them(tmp_path):
    from modaclouds_batch.store import migrations as store_module

    db = Database(tmp_path / "db")
    store_module.migrations.apply(db, stop_before="m025_job_spool_tallies")
    for i, state in enumerate(["idle", "idle", "completed"]):
        db["jobs"].insert({"id": str(uuid.uuid4()), "name": f"j{i}", "owner": "alice", "state": state,
                           "created_at": "x", "updated_at": "x", "spool_bytes": 100 + i})
    db.close()
    store = Store(tmp_path / "db")
    assert _spool_tallies(store) == {("alice", "idle"): 201, ("alice", "completed"): 102}
    make_job(store, 1)
    assert _tallies(store) == _counted(store) and _spool_tallies(store) == _spool_summed(store)


def test_usage_reads_the_tallies_not_every_active_job(tmp_path):
    """The quota check of every submission: its cost must not grow with the owner's queue."""
    store = Store(tmp_path / "db")
    active = ["idle", "running", "held"]
    store.insert_jobs([{"id": str(uuid.uuid4()), "name": "j", "owner": owner, "state": state, "arguments": "[]",
                        "created_at": "2026-01-01T00:00:00.000000Z", "updated_at": "x", "spool_bytes": 5}
                       for owner, state in [("alice", "idle"), ("alice", "running"), ("alice", "completed"),
                                            ("bob", "idle")]])
    store.take_charge("alice", 3, 1000, active, "2027", lambda usage: None)
    statements = []
    with store.tracing(statements.append):
        usage = store.usage("alice", active, "2027")
    assert any("job_tallies" in sql for sql in statements)  # the trace saw the reads
    # The same figures as counting the rows: active jobs and their spool, plus the charges in flight.
    assert (usage["active_jobs"], usage["spool_bytes"], usage["charged_jobs"]) == (2 + 3, 10 + 1000, 3)
    assert not [sql for sql in statements if re.search(r"from jobs\b", sql) and "created_at >=" not in sql]


def test_every_migration_after_the_tallies_keeps_their_triggers(tmp_path):
    """A migration that rebuilds the jobs table (sqlite-utils transform) drops its triggers."""
    from modaclouds_batch.store import JOB_TALLY_TRIGGERS

    store = Store(tmp_path / "db")
    triggers = {name for (name,) in store.db.execute("select name from sqlite_master where type = 'trigger'")}
    assert {t.split()[2] for t in JOB_TALLY_TRIGGERS} <= triggers
