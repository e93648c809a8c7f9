import uuid
from types import SimpleNamespace

import pytest

from modaclouds_batch.jobs.tracker import MAX_RETRIEVE_ATTEMPTS, Tracker
from modaclouds_batch.store import Store
from modaclouds_batch.timefmt import now_iso

from .fakes import FakeCondor


@pytest.fixture
def world(tmp_path):
    store = Store(tmp_path / "gw.db")
    condor = FakeCondor()
    ended = []
    return SimpleNamespace(store=store, condor=condor, ended=ended,
                           tracker=Tracker(store, condor, interval=60, jobs_ended=ended.append, orphan_grace=0))


def add_job(world, status=1, **ad):
    job_id = str(uuid.uuid4())
    cluster = len(world.condor.queue) + len(world.condor.history_ads) + 1
    now = now_iso()
    world.store.insert_job({
        "id": job_id, "name": "j", "owner": "alice", "state": "idle", "cluster_id": cluster,
        "proc_id": 0, "job_dir": "/nonexistent", "arguments": "[]", "created_at": now, "updated_at": now,
    })
    world.condor.queue[job_id] = {"GatewayJobId": job_id, "ClusterId": cluster, "ProcId": 0, "JobStatus": status, **ad}
    return job_id


def test_running_job_is_recorded_running_with_its_history(world):
    job_id = add_job(world, status=2, JobStartDate=1_700_000_000, RemoteHost="slot1@node")
    world.tracker.run_cycle()
    job = world.store.get_job(job_id)
    assert job["state"] == "running"
    assert job["started_at"] == "2023-11-14T22:13:20.000000Z"
    assert job["remote_host"] == "slot1@node"
    assert [e["state"] for e in world.store.job_events(job_id)] == ["idle", "running"]


def test_completed_job_becomes_completed_only_with_its_outputs(world):
    job_id = add_job(world, status=4, ExitCode=0, ExitBySignal=False, CompletionDate=1_700_000_100)
    world.tracker.run_cycle()
    job = world.store.get_job(job_id)
    assert job["state"] == "completed"
    assert job["outputs_retrieved_at"] is not None
    assert job["exit_status"] == 0
    assert [c[0] for c in world.condor.calls] == ["query", "retrieve", "edit"]
    assert job_id not in world.condor.queue  # let out of the queue once retrieved


def test_non_zero_exit_is_failed_with_the_status_in_the_reason(world):
    job_id = add_job(world, status=4, ExitCode=3, ExitBySignal=False)
    world.tracker.run_cycle()
    job = world.store.get_job(job_id)
    assert (job["state"], job["exit_status"]) == ("failed", 3)
    assert job["state_reason"] == "run.sh exited with status 3"


def test_held_job_records_condor_reason(world):
    job_id = add_job(world, status=5, HoldReason="via condor_hold (by user batch)", HoldReasonCode=1)
    world.tracker.run_cycle()
    job = world.store.get_job(job_id)
    assert (job["state"], job["state_reason"]) == ("held", "via condor_hold (by user batch)")


@pytest.mark.parametrize("count", [10, 1000])
def test_round_trips_per_cycle_do_not_grow_with_jobs(world, count):
    for i in range(count):
        add_job(world, status=[1, 2, 4][i % 3], ExitCode=0)
    report = world.tracker.run_cycle()
    assert report.round_trips == 3  # query + retrieve + edit, whatever the count
    assert report.jobs_tracked == count


def test_job_that_left_the_queue_is_closed_from_history(world):
    job_id = add_job(world, status=1)
    world.condor.history_ads[job_id] = {**world.condor.queue.pop(job_id), "JobStatus": 3, "RemoveReason": "by admin"}
    world.tracker.run_cycle()
    job = world.store.get_job(job_id)
    assert (job["state"], job["state_reason"]) == ("removed", "by admin")


def test_job_lost_by_htcondor_is_a_submission_error_after_a_few_cycles(world):
    job_id = add_job(world, status=1)
    del world.condor.queue[job_id]
    world.tracker.run_cycle()
    assert world.store.get_job(job_id)["state"] == "idle"
    world.tracker.run_cycle()
    world.tracker.run_cycle()
    job = world.store.get_job(job_id)
    assert job["state"] == "submission_error" and "lost the job" in job["state_reason"]


def test_orphan_in_the_queue_is_removed(world):
    orphan = str(uuid.uuid4())
    world.condor.queue[orphan] = {"GatewayJobId": orphan, "ClusterId": 99, "ProcId": 0, "JobStatus": 1}
    report = world.tracker.run_cycle()
    assert report.orphans_removed == 1
    assert orphan not in world.condor.queue


def test_failed_retrieval_is_retried_then_closed_with_the_reason(world):
    job_id = add_job(world, status=4, ExitCode=0)
    world.condor.fail.add("retrieve")
    for _ in range(MAX_RETRIEVE_ATTEMPTS - 1):
        world.tracker.run_cycle()
        assert world.store.get_job(job_id)["state"] == "idle"
    world.tracker.run_cycle()
    job = world.store.get_job(job_id)
    assert job["state"] == "completed"
    assert job["outputs_retrieved_at"] is None
    assert "outputs could not be retrieved" in job["state_reason"]


def test_schedd_down_changes_nothing(world):
    job_id = add_job(world, status=2)
    world.condor.fail.add("query")
    report = world.tracker.run_cycle()
    assert report.errors and world.store.get_job(job_id)["state"] == "idle"


def test_the_service_hears_of_ended_jobs_after_the_first_cycle_and_each_cycle_jobs_end(world):
    running = add_job(world, status=2)
    world.tracker.run_cycle()
    assert world.ended == [[]]  # the first cycle: listeners catch up on what a stop left undone
    world.tracker.run_cycle()
    assert world.ended == [[]]  # nothing ended
    done = add_job(world, status=4, ExitCode=0)
    world.condor.queue[running].update(JobStatus=3, RemoveReason="by test")
    world.tracker.run_cycle()
    assert sorted(world.ended[1]) == sorted([done, running])


def test_a_removed_job_is_noted_gone_from_the_queue_only_once_it_has_left(world):
    job_id = add_job(world, status=2)
    world.tracker.run_cycle()
    world.condor.queue[job_id].update(JobStatus=3)  # removed: the worker is still stopping it
    world.tracker.run_cycle()
    world.tracker.run_cycle()
    job = world.store.get_job(job_id)
    assert job["state"] == "removed" and job["left_queue_at"] is None
    del world.condor.queue[job_id]
    world.tracker.run_cycle()
    assert world.store.get_job(job_id)["left_queue_at"] is not None


def test_a_running_job_still_fetching_its_input_is_transferring_input(world):
    job_id = add_job(world, status=2, JobCurrentStartDate=1_700_000_000)
    world.tracker.run_cycle()
    assert world.store.get_job(job_id)["backend_status"] == "Transferring Input"
    world.condor.queue[job_id]["JobCurrentStartExecutingDate"] = 1_700_000_005
    world.tracker.run_cycle()
    assert world.store.get_job(job_id)["backend_status"] == "Running"


def test_a_running_job_requeued_by_htcondor_says_where_it_stopped_and_why(world):
    job_id = add_job(world, status=2, JobStartDate=1_700_000_000, RemoteHost="slot1_1@n1", NumJobStarts=1)
    world.tracker.run_cycle()
    world.condor.queue[job_id].update(JobStatus=1, RemoteHost=None, LastRemoteHost="slot1_1@n1",
                                      VacateReason="Job lease expired")
    world.tracker.run_cycle()

    events = world.store.job_events(job_id)
    assert [e["state"] for e in events] == ["idle", "running", "idle"]
    assert events[-1]["reason"] == ("requeued: it stopped running on slot1_1@n1 (Job lease expired); "
                                    "HTCondor runs it again from the start")
    assert world.store.get_job(job_id)["run_count"] == 1


@pytest.fixture
def changes_world(tmp_path):
    """A tracker that reads only changes between full cycles, on clocks the test moves."""
    store = Store(tmp_path / "gw.db")
    condor = FakeCondor()
    clocks = SimpleNamespace(monotonic=1000.0, wall=1_800_000_000.0)
    tracker = Tracker(store, condor, interval=2, orphan_grace=0, reconcile_interval=60,
                      clock=lambda: clocks.monotonic, wall_clock=lambda: clocks.wall)
    return SimpleNamespace(store=store, condor=condor, clocks=clocks, tracker=tracker)


def later(world, seconds: float) -> None:
    world.clocks.monotonic += seconds
    world.clocks.wall += seconds


@pytest.mark.parametrize("count", [10, 1000])
def test_a_steady_cycle_reads_and_writes_nothing_whatever_the_number_of_jobs(changes_world, count):
    w = changes_world
    entered = int(w.clocks.wall) - 3600
    ids = [add_job(w, status=1, EnteredCurrentStatus=entered) for _ in range(count)]
    first = w.tracker.run_cycle()
    assert (first.full, first.ads_read) == (True, count)
    later(w, 30)
    steady = w.tracker.run_cycle()
    assert (steady.full, steady.ads_read, steady.changes, steady.round_trips) == (False, 0, 0, 1)
    # One job starts: the next change cycle reads that one ad and writes that one row.
    w.condor.queue[ids[0]].update(JobStatus=2, EnteredCurrentStatus=int(w.clocks.wall))
    later(w, 2)
    one = w.tracker.run_cycle()
    assert (one.full, one.ads_read, one.changes) == (False, 1, 1)
    assert w.store.get_job(ids[0])["state"] == "running"
    # Every reconcile_interval a full cycle reads every ad again (the safety net).
    later(w, 60)
    assert (lambda r: (r.full, r.ads_read, r.changes))(w.tracker.run_cycle()) == (True, count, 0)


def test_a_change_cycle_still_closes_a_job_that_left_the_queue_unseen_at_the_next_full_cycle(changes_world):
    w = changes_world
    job_id = add_job(w, status=2, EnteredCurrentStatus=int(w.clocks.wall) - 3600)
    w.tracker.run_cycle()
    # It ends and leaves the queue between two cycles without a status the change query could see.
    w.condor.history_ads[job_id] = {**w.condor.queue.pop(job_id), "JobStatus": 4, "ExitCode": 0}
    later(w, 2)
    assert w.tracker.run_cycle().changes == 0  # a change cycle cannot tell it left
    later(w, 60)
    w.tracker.run_cycle()
    assert w.store.get_job(job_id)["state"] == "completed"


def test_a_failed_query_makes_the_next_cycle_a_full_one(changes_world):
    w = changes_world
    add_job(w, status=1, EnteredCurrentStatus=int(w.clocks.wall) - 3600)
    w.tracker.run_cycle()
    w.condor.fail.add("query")
    later(w, 2)
    assert w.tracker.run_cycle().errors
    w.condor.fail.clear()
    later(w, 2)
    assert w.tracker.run_cycle().full


def test_a_removed_job_still_in_the_queue_is_watched_until_it_has_left(changes_world):
    w = changes_world
    job_id = add_job(w, status=2, EnteredCurrentStatus=int(w.clocks.wall) - 3600)
    w.tracker.run_cycle()
    w.condor.queue[job_id].update(JobStatus=3, EnteredCurrentStatus=int(w.clocks.wall))
    later(w, 2)
    w.tracker.run_cycle()
    assert w.store.get_job(job_id)["state"] == "removed"
    later(w, 30)  # long past the change: only the watch list finds it
    w.tracker.run_cycle()
    assert w.store.get_job(job_id)["left_queue_at"] is None
    w.condor.history_ads[job_id] = w.condor.queue.pop(job_id)
    later(w, 2)
    assert not w.tracker.run_cycle().full
    assert w.store.get_job(job_id)["left_queue_at"] is not None


def test_a_change_cycle_removes_an_orphan_that_never_changes_once_its_grace_passed(changes_world):
    w = changes_world
    orphan = str(uuid.uuid4())
    w.condor.queue[orphan] = {"GatewayJobId": orphan, "ClusterId": 99, "ProcId": 0, "JobStatus": 1,
                              "EnteredCurrentStatus": int(w.clocks.wall)}
    w.tracker.orphan_grace = 10
    w.tracker.run_cycle()
    later(w, 30)  # its status is long unchanged: only the watch list shows it
    report = w.tracker.run_cycle()
    assert (report.full, report.orphans_removed) == (False, 1)


def test_a_job_acted_on_is_watched_so_its_leaving_unseen_is_closed_by_the_next_change_cycle(changes_world):
    """A job removed while idle leaves the queue at once, before a change query can see its
    status change: watched after the action, the next change cycle reads its end."""
    w = changes_world
    gone, kept = (add_job(w, status=1, EnteredCurrentStatus=int(w.clocks.wall) - 3600) for _ in range(2))
    w.tracker.run_cycle()
    for job_id in (gone, kept):
        w.condor.history_ads[job_id] = {**w.condor.queue.pop(job_id), "JobStatus": 3, "RemoveReason": "by test"}
    w.tracker.watch([gone])
    later(w, 2)
    report = w.tracker.run_cycle()
    assert not report.full and w.store.get_job(gone)["state"] == "removed"
    assert w.store.get_job(kept)["state"] == "idle"  # not watched: left to the next full cycle
