"""The store under concurrent use (issue 20): reads beside the writer, durable commits grouped."""

from __future__ import annotations

import threading
import uuid

import pytest

from modaclouds_batch.store import Store
from modaclouds_batch.timefmt import now_iso

from ..polling import until


def job_row(job_id: str) -> dict:
    now = now_iso()
    return {"id": job_id, "name": "j", "owner": "alice", "state": "idle", "cluster_id": 1, "proc_id": 0,
            "job_dir": "/nonexistent", "arguments": "[]", "created_at": now, "updated_at": now}


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "gw.db")
    yield store
    store.close()


class HeldTransaction:
    """Another thread inside a write transaction (the writer's lock held) until ``release``."""

    def __init__(self, store: Store, work=lambda db: None):
        self.entered, self.go = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, args=(store, work), daemon=True)
        self.thread.start()
        assert self.entered.wait(30)

    def _hold(self, store, work):
        with store.transaction() as db:
            work(db)
            self.entered.set()
            self.go.wait(60)

    def release(self):
        self.go.set()
        self.thread.join(30)


def in_thread(fn) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = fn()
        except Exception as exc:  # the test looks at it
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_read_does_not_wait_for_another_threads_write_transaction(store):
    committed, uncommitted = str(uuid.uuid4()), str(uuid.uuid4())
    store.insert_job(job_row(committed))
    held = HeldTransaction(store, lambda db: db["jobs"].insert(job_row(uncommitted)))
    try:
        reader, outcome = in_thread(lambda: (store.get_job(committed), store.get_job(uncommitted)))
        reader.join(30)
        # Before issue 20, the read queued behind the writer's lock until the transaction ended.
        assert not reader.is_alive(), "the read waited for the other thread's transaction"
        found, not_yet = outcome["value"]
        assert found["id"] == committed and not_yet is None  # only what is committed
    finally:
        held.release()
    assert store.get_job(uncommitted) is not None


def test_a_read_inside_a_transaction_sees_its_own_rows(store):
    job_id = str(uuid.uuid4())
    with store.transaction() as db:
        db["jobs"].insert(job_row(job_id))
        assert store.get_job(job_id)["id"] == job_id
        assert store.count_jobs() == 1


def test_a_list_page_and_its_total_come_from_one_snapshot(store):
    from modaclouds_batch.store import JobFilter
    store.insert_jobs([job_row(str(uuid.uuid4())) for _ in range(3)])
    statements: list[str] = []
    with store.tracing(statements.append):
        rows, _, total = store.list_jobs(JobFilter(), 10, None)
    assert (len(rows), total) == (3, 3)
    reads = [s for s in statements if s.lower().startswith(("begin", "commit", "select"))]
    assert reads[0].lower() == "begin" and reads[-1].lower() == "commit"
    assert sum(s.lower() == "begin" for s in reads) == 1


def test_durable_works_that_queue_behind_a_commit_share_the_next_one(store):
    """Three submissions' intents queued while the writer is busy: one fsync for all three."""
    ids = [str(uuid.uuid4()) for _ in range(3)]
    statements: list[str] = []
    with store.tracing(statements.append):
        held = HeldTransaction(store)
        threads = [in_thread(lambda job_id=job_id: store.add_intents([job_id], pid=1)) for job_id in ids]
        until(lambda: len(store._queued) == 3, timeout=30, what="three queued durable works")
        held.release()
        for thread, outcome in threads:
            thread.join(30)
            assert not thread.is_alive() and "error" not in outcome
    assert store.intended(ids) == set(ids)
    assert statements.count("PRAGMA synchronous = FULL") == 1
    durable = statements[statements.index("PRAGMA synchronous = FULL"):statements.index("PRAGMA synchronous = NORMAL")]
    assert sum(s.upper() == "COMMIT" for s in durable) == 1
    assert sum("submission_intents" in s for s in durable) == 3


def test_a_failing_work_in_a_group_commit_undoes_only_its_own_writes(store):
    ok, bad = str(uuid.uuid4()), str(uuid.uuid4())
    held = HeldTransaction(store)
    first = in_thread(lambda: store.insert_jobs([job_row(ok)]))
    until(lambda: len(store._queued) == 1, timeout=30, what="the first queued work")

    def half_then_fail(db):
        db["jobs"].insert(job_row(bad))
        raise ValueError("refused")

    second = in_thread(lambda: store.durably(half_then_fail))
    until(lambda: len(store._queued) == 2, timeout=30, what="both queued works")
    held.release()
    for thread, _ in (first, second):
        thread.join(30)
    assert "error" not in first[1] and isinstance(second[1]["error"], ValueError)
    assert store.get_job(ok) is not None and store.get_job(bad) is None


def test_a_work_that_ends_the_whole_transaction_does_not_take_the_others_with_it(store):
    ok = str(uuid.uuid4())
    held = HeldTransaction(store)
    first = in_thread(lambda: store.insert_jobs([job_row(ok)]))
    until(lambda: len(store._queued) == 1, timeout=30, what="the first queued work")

    def end_everything(db):
        db.execute("ROLLBACK")  # as a RAISE(ROLLBACK) trigger would
        raise ValueError("rolled back")

    second = in_thread(lambda: store.durably(end_everything))
    until(lambda: len(store._queued) == 2, timeout=30, what="both queued works")
    held.release()
    for thread, _ in (first, second):
        thread.join(30)
    assert "error" not in first[1] and isinstance(second[1]["error"], ValueError)
    assert store.get_job(ok) is not None  # run again in a transaction of its own


def test_a_durable_work_inside_a_transaction_joins_it(store):
    job_id = str(uuid.uuid4())
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.insert_jobs([job_row(job_id)])
            raise RuntimeError("undo all")
    assert store.get_job(job_id) is None


def test_close_waits_for_a_read_in_flight_and_later_reads_fail_cleanly(store):
    store.insert_jobs([job_row(str(uuid.uuid4())) for _ in range(50)])
    readers = [in_thread(lambda: [store.count_jobs() for _ in range(200)]) for _ in range(3)]
    store.close()
    for thread, outcome in readers:
        thread.join(30)
        assert not thread.is_alive()
        assert "value" in outcome or "closed" in str(outcome["error"]).lower()
