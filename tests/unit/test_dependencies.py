"""Job dependencies (after / after_any) over the fake schedd: the gate, the tracker's
decisions, the refusals at submission, and the release action on a waiting job."""

import falcon.testing
import pytest

from modaclouds_batch.app import create_app
from modaclouds_batch.condor import submit_description as sd
from modaclouds_batch.jobs import dependencies
from modaclouds_batch.store import Store

from .test_dialect_001_002 import World


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.close()


def submit(world, http=None, **body):
    resp = (http or world.http).simulate_post("/jobs", json={"command": "echo hi", **body})
    return resp


def job(world, job_id, http=None):
    return (http or world.http).simulate_get(f"/jobs/{job_id}").json


def test_a_job_named_in_after_waits_gated_without_a_slot_and_says_for_what(world):
    first = submit(world).json["id"]
    resp = submit(world, after=[first])
    assert resp.status_code == 201, resp.text
    second = resp.json
    assert second["job_status"] == "idle" and second["state_reason"] == f"waiting for {first}"
    assert second["after"] == [first] and second["after_any"] == [] and second["awaiting_dependencies"] is True
    assert world.condor.queue[second["id"]][sd.GATEWAY_WAITING] is True
    assert job(world, first)["awaiting_dependencies"] is False
    world.tracker.run_cycle()
    # Still waiting: the reason is not replaced by the slot explanation.
    assert job(world, second["id"])["state_reason"] == f"waiting for {first}"
    assert world.condor.queue[second["id"]][sd.GATEWAY_WAITING] is True


def test_the_gate_opens_once_every_dependency_completed(world):
    first, other = submit(world).json["id"], submit(world).json["id"]
    second = submit(world, after=[first, other]).json["id"]
    world.finish(first)
    assert job(world, second)["state_reason"] == f"waiting for {other}"
    assert world.condor.queue[second][sd.GATEWAY_WAITING] is True
    world.finish(other)
    view = job(world, second)
    assert world.condor.queue[second][sd.GATEWAY_WAITING] is False
    assert view["job_status"] == "idle" and view["awaiting_dependencies"] is False
    assert ("edit", sd.jobs_constraint(world.store.instance_id, [second])) in world.condor.calls


def test_a_failed_dependency_removes_the_dependant_with_the_reason_and_notifies(world):
    world.tracker.workers = lambda: []  # idle jobs are explained too: not this one
    world.condor.act = lambda action, constraint, reason=None: {"TotalSuccess": 1}  # the remove lands later
    first = submit(world).json["id"]
    second = submit(world, after=[first], notification="http://example.org/hook").json["id"]
    world.finish(first, exit_code=3)
    view = job(world, second)
    assert view["job_status"] == "removed"
    assert view["state_reason"] == f"dependency {first} ended failed"
    assert view["awaiting_dependencies"] is False and view["completion_date"]
    outbox = world.store.job_notifications(second)
    assert [(e["event_type"], e["payload"]["state_reason"]) for e in outbox] == [
        ("job.removed", f"dependency {first} ended failed")]


def test_chains_cascade_a_failure_stage_by_stage(world):
    first = submit(world).json["id"]
    second = submit(world, after=[first]).json["id"]
    third = submit(world, after=[second]).json["id"]
    assert job(world, third)["state_reason"] == f"waiting for {second}"
    world.finish(first, exit_code=1)
    world.tracker.run_cycle()
    assert job(world, third)["state_reason"] == f"dependency {second} ended removed"


def test_after_any_starts_once_the_dependency_ended_whatever_its_end(world):
    first = submit(world).json["id"]
    second = submit(world, after_any=[first]).json["id"]
    assert job(world, second)["after_any"] == [first]
    world.finish(first, exit_code=2)
    assert job(world, first)["job_status"] == "failed"
    assert world.condor.queue[second][sd.GATEWAY_WAITING] is False
    assert job(world, second)["job_status"] == "idle"


def test_a_dependency_that_already_completed_does_not_gate(world):
    first = submit(world).json["id"]
    world.finish(first)
    second = submit(world, after=[first]).json
    assert second["awaiting_dependencies"] is False and second["state_reason"] is None
    assert sd.GATEWAY_WAITING not in world.condor.queue[second["id"]]
    assert second["after"] == [first]


def test_a_dependency_that_already_failed_is_refused_and_nothing_is_left(world):
    first = submit(world).json["id"]
    world.finish(first, exit_code=1)
    before = world.store.count_jobs()
    resp = submit(world, after=[first])
    assert resp.status_code == 409
    assert resp.json["field"] == "after" and f"dependency {first} ended failed" in resp.json["error"]
    assert world.store.count_jobs() == before
    # after_any takes it: the job runs whatever the first one's end.
    assert submit(world, after_any=[first]).json["awaiting_dependencies"] is False


@pytest.mark.parametrize("body, field, words", [
    ({"after": ["not-a-uuid"]}, "after", "is not a job id"),
    ({"after": "00000000-0000-4000-8000-000000000000"}, "after", "no job or array"),
    ({"after_any": [7]}, "after_any", "must be a list of job ids"),
])
def test_malformed_or_unknown_dependencies_are_400_naming_the_field(world, body, field, words):
    resp = submit(world, **body)
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == field and words in resp.json["error"]
    assert world.store.count_jobs() == 0 and not world.condor.queue


def test_a_job_named_twice_is_refused(world):
    first = submit(world).json["id"]
    resp = submit(world, after=[first], after_any=[first])
    assert resp.status_code == 400 and resp.json["repeated"] == [first]


def test_too_many_dependencies_are_refused(world):
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(dependencies.MAX_DEPENDENCIES + 1)]
    resp = submit(world, after=ids)
    assert resp.status_code == 400 and "at most" in resp.json["error"]


def test_form_fields_take_repeated_and_comma_separated_ids(world):
    a, b, c = (submit(world).json["id"] for _ in range(3))
    resp = world.http.simulate_post("/jobs", body=f"job-bundle=echo&job-after={a},{b}&job-after-any={c}",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 201, resp.text
    assert resp.json["after"] == [a, b] and resp.json["after_any"] == [c]


def test_release_on_a_waiting_job_is_409_and_says_why(world):
    first = submit(world).json["id"]
    second = submit(world, after=[first]).json["id"]
    resp = world.http.simulate_post(f"/jobs/{second}/release")
    assert resp.status_code == 409
    assert f"waiting for {first}" in resp.json["error"] and "cannot start it earlier" in resp.json["error"]
    assert world.condor.queue[second][sd.GATEWAY_WAITING] is True


def test_a_user_hold_and_release_of_a_waiting_job_keeps_it_waiting(world):
    first = submit(world).json["id"]
    second = submit(world, after=[first]).json["id"]
    world.set_status(second, 5, HoldReasonCode=1, HoldReason="held by alice")
    assert job(world, second)["job_status"] == "held"
    world.set_status(second, 1)
    view = job(world, second)
    assert (view["job_status"], view["state_reason"]) == ("idle", f"waiting for {first}")
    assert world.condor.queue[second][sd.GATEWAY_WAITING] is True


def test_a_removed_waiting_job_is_not_decided_again(world):
    first = submit(world).json["id"]
    second = submit(world, after=[first]).json["id"]
    world.condor.history_ads[second] = {**world.condor.queue.pop(second), "JobStatus": 3}
    world.tracker.run_cycle()
    world.finish(first, exit_code=1)
    assert [e["state"] for e in world.store.job_events(second)] == ["idle", "removed"]


def test_an_array_named_as_a_dependency_waits_for_every_item(world):
    array = submit(world, count=2).json
    second = submit(world, after=[array["id"]]).json["id"]
    first_item, last_item = array["job_ids"]
    world.finish(first_item)
    assert job(world, second)["state_reason"] == f"waiting for {array['id']}"
    world.finish(last_item, exit_code=4)
    assert job(world, second)["state_reason"] == f"dependency {array['id']} ended failed (item {last_item})"


def test_an_array_dependant_gates_every_item(world):
    first = submit(world).json["id"]
    array = submit(world, count=2, after=[first]).json
    assert all(world.condor.queue[item][sd.GATEWAY_WAITING] is True for item in array["job_ids"])
    world.finish(first)
    assert all(world.condor.queue[item][sd.GATEWAY_WAITING] is False for item in array["job_ids"])


def test_a_deleted_dependency_ends_an_afterok_dependant(world):
    first = submit(world).json["id"]
    second = submit(world, after=[first]).json["id"]
    assert world.http.simulate_delete(f"/jobs/{first}").status_code == 204
    world.tracker.run_cycle()
    assert job(world, second)["state_reason"] == f"dependency {first} was deleted before it completed"


def test_the_gate_survives_a_gateway_restart(world, tmp_path):
    first = submit(world).json["id"]
    second = submit(world, after=[first]).json["id"]
    world.store.close()
    restarted = World(tmp_path)  # the same home, the same database
    restarted.condor.queue = world.condor.queue
    try:
        restarted.finish(first)
        assert restarted.condor.queue[second][sd.GATEWAY_WAITING] is False
        assert restarted.store.get_job(second)["awaiting_dependencies"] is None
    finally:
        restarted.store.close()


def test_a_final_job_still_gated_in_the_queue_is_removed(world):
    """The gateway stopped between recording a dependant removed and removing it."""
    first = submit(world).json["id"]
    second = submit(world, after=[first]).json["id"]
    gated = dict(world.condor.queue[second])
    world.finish(first, exit_code=1)
    world.condor.queue[second] = gated  # as if the remove had never reached the schedd
    world.tracker.run_cycle()
    assert second not in world.condor.queue


def test_the_schedd_down_while_opening_leaves_the_job_waiting_for_the_next_cycle(world):
    first = submit(world).json["id"]
    second = submit(world, after=[first]).json["id"]
    world.condor.fail.add("edit")
    world.finish(first)  # the retrieve's queue exit is an edit too: it fails as well
    world.condor.fail.clear()
    world.tracker.run_cycle()
    world.tracker.run_cycle()
    assert world.condor.queue[second][sd.GATEWAY_WAITING] is False
    assert world.store.get_job(second)["awaiting_dependencies"] is None


def test_another_users_job_is_as_unknown_as_a_missing_one(tmp_path):
    world = World(tmp_path, auth=True)
    try:
        app = create_app(world.gateway)

        def as_user(user):
            token, _ = world.gateway.tokens.create(user, "user", label="unit tests")
            return falcon.testing.TestClient(app, headers={"Authorization": f"Bearer {token}"})

        alice, bob = as_user("alice"), as_user("bob")
        theirs = submit(world, http=alice).json["id"]
        refused = submit(world, http=bob, after=[theirs])
        missing = submit(world, http=bob, after=["00000000-0000-4000-8000-000000000000"])
        assert refused.status_code == missing.status_code == 400
        assert refused.json["error"] == missing.json["error"].replace("00000000-0000-4000-8000-000000000000", theirs)
        assert submit(world, http=alice, after=[theirs]).status_code == 201
    finally:
        world.store.close()


def test_the_migration_keeps_edges_and_deleting_a_job_drops_its_own(tmp_path):
    store = Store(tmp_path / "gw.db")
    now = "2026-01-01T00:00:00.000000Z"
    row = {"name": "j", "owner": "alice", "state": "idle", "created_at": now, "updated_at": now}
    store.insert_jobs([{**row, "id": "a"}])
    store.insert_jobs([{**row, "id": "b"}], dependencies=[("b", "a", "afterok")])
    assert store.dependencies_of(["b"]) == {"b": [("a", "afterok")]}
    store.delete_job("a")
    assert store.dependencies_of(["b"]) == {"b": [("a", "afterok")]}
    assert store.dependency_targets(["a"]) == {}
    store.delete_job("b")
    assert store.dependencies_of(["b"]) == {}
    store.close()
