import re
import uuid

import pytest

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

    from modaclouds_batch import store

    defined = [name for name, fn in inspect.getmembers(store, inspect.isfunction)
               if fn.__module__ == store.__name__ and re.match(r"m\d{3}_", name)]
    registered = [m.name for m in store.migrations._migrations]
    assert sorted(defined) == sorted(registered) and len(registered) == len(set(registered))
