"""The change stream: every visible state change once, in order, resumable by id."""

import json
import uuid

import pytest

from modaclouds_batch.access.identity import Actor
from modaclouds_batch.api.changes import JobChangesResource, _Stream
from modaclouds_batch.app import build_gateway
from modaclouds_batch.errors import Forbidden, NotFound
from modaclouds_batch.jobs.changes import ChangeFeed, ChangeFilter
from modaclouds_batch.settings import load_settings
from modaclouds_batch.store import JobChange
from modaclouds_batch.timefmt import now_iso

from .apps import admin_client


def _settings(tmp_path, **overrides):
    # max_seconds 0: a stream sends what is there and ends, so simulate_get returns.
    return load_settings(overrides={"home": tmp_path, "event_stream_max_seconds": 0, **overrides}, environ={})


@pytest.fixture
def gateway(tmp_path):
    gw = build_gateway(_settings(tmp_path))
    yield gw
    gw.store.close()


@pytest.fixture
def client(gateway):
    return admin_client(gateway)


def _job(store, owner="anonymous", name="j"):
    job_id = str(uuid.uuid4())
    now = now_iso()
    store.insert_job({"id": job_id, "name": name, "owner": owner, "state": "idle",
                      "created_at": now, "updated_at": now})
    return job_id


def _move(store, job_id, *states):
    for state in states:
        store.apply_job_changes([JobChange(job_id, new_state=state, reason=f"now {state}")])


def _events(resp):
    """The stream's events as (id, event, data) from the raw text/event-stream body."""
    events = []
    for block in resp.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


def test_a_stream_from_zero_sends_every_change_in_order_with_its_id(client, gateway):
    first, second = _job(gateway.store), _job(gateway.store)
    _move(gateway.store, first, "running", "completed")
    _move(gateway.store, second, "running")
    resp = client.simulate_get("/jobs/events", headers={"Last-Event-ID": "0"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/event-stream"
    assert resp.text.startswith("retry: ")
    events = _events(resp)
    assert [(e[2]["job_id"], e[2]["state"]) for e in events] == [
        (first, "idle"), (second, "idle"), (first, "running"), (first, "completed"), (second, "running")]
    assert [e[0] for e in events] == sorted(e[0] for e in events) and len({e[0] for e in events}) == 5
    assert {e[1] for e in events} == {"state"}
    assert events[3][2]["reason"] == "now completed" and events[0][0] == events[0][2]["id"]


def test_resuming_after_an_id_sends_only_what_came_later(client, gateway):
    job = _job(gateway.store)
    _move(gateway.store, job, "running")
    seen = _events(client.simulate_get("/jobs/events", headers={"Last-Event-ID": "0"}))
    _move(gateway.store, job, "completed")
    resumed = _events(client.simulate_get("/jobs/events", headers={"Last-Event-ID": str(seen[-1][0])}))
    assert [e[2]["state"] for e in resumed] == ["completed"]
    # Without an id a stream starts at the newest change: only what happens after it.
    assert _events(client.simulate_get("/jobs/events")) == []
    # EventSource cannot send headers on its first connection: the query parameter does the same.
    assert _events(client.simulate_get("/jobs/events", query_string="last_event_id=0")) == seen + resumed


def test_filters_by_job_array_and_state(client, gateway):
    one, other = _job(gateway.store), _job(gateway.store)
    _move(gateway.store, one, "running", "completed")
    _move(gateway.store, other, "running", "failed")
    by_job = _events(client.simulate_get("/jobs/events", query_string=f"job_id={one}&last_event_id=0"))
    assert {e[2]["job_id"] for e in by_job} == {one} and len(by_job) == 3
    finals = _events(client.simulate_get("/jobs/events", query_string="status=completed,failed&last_event_id=0"))
    assert [(e[2]["job_id"], e[2]["state"]) for e in finals] == [(one, "completed"), (other, "failed")]
    unknown = client.simulate_get("/jobs/events", query_string=f"array_id={uuid.uuid4()}")
    assert unknown.status_code == 404
    bad = client.simulate_get("/jobs/events", query_string="status=sleeping")
    assert bad.status_code == 400 and bad.json["field"] == "status"


@pytest.mark.parametrize("value", ["-1", "abc", "1e3", "9" * 19])
def test_a_malformed_last_event_id_is_refused(client, value):
    resp = client.simulate_get("/jobs/events", headers={"Last-Event-ID": value})
    assert resp.status_code == 400 and resp.json["field"] == "Last-Event-ID"


def test_users_follow_only_their_own_jobs(gateway):
    feed = ChangeFeed(gateway.store, gateway.service)
    alice, bob = Actor("alice"), Actor("bob")
    alices, bobs = _job(gateway.store, owner="alice"), _job(gateway.store, owner="bob")
    _move(gateway.store, bobs, "running")
    assert [c["job_id"] for c in feed.after(feed.check(alice, ChangeFilter()), 0, 100)] == [alices]
    assert [c["state"] for c in feed.after(feed.check(bob, ChangeFilter()), 0, 100)] == ["idle", "running"]
    with pytest.raises(NotFound):
        feed.check(alice, ChangeFilter(job_id=bobs))
    with pytest.raises(Forbidden):
        feed.check(alice, ChangeFilter(owner="bob"))
    admin = feed.check(Actor("root", "admin"), ChangeFilter(owner="bob"))
    assert [c["state"] for c in feed.after(admin, 0, 100)] == ["idle", "running"]


def test_streams_beyond_the_limit_wait(tmp_path):
    gw = build_gateway(_settings(tmp_path, max_event_streams=0))
    try:
        busy = admin_client(gw).simulate_get("/jobs/events")
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
        assert "reconnect" in busy.json["error"]
    finally:
        gw.store.close()


def test_a_closed_stream_frees_its_slot_even_if_it_never_started(tmp_path):
    gw = build_gateway(_settings(tmp_path, max_event_streams=1))
    try:
        client = admin_client(gw)
        # The test client reads each body and closes it: one slot serves one stream after another.
        assert [client.simulate_get("/jobs/events").status_code for _ in range(3)] == [200, 200, 200]
        resource = JobChangesResource(ChangeFeed(gw.store, gw.service), max_streams=1, heartbeat_seconds=15,
                                      max_seconds=0)
        assert resource.slots.acquire(blocking=False)
        _Stream(resource, None, 0).close()  # a client gone before the first byte
        assert resource.slots.acquire(blocking=False)
    finally:
        gw.store.close()


def test_event_ids_are_never_reused_after_the_newest_is_deleted(gateway):
    store = gateway.store
    keep, gone = _job(store), _job(store)
    _move(store, gone, "running")
    newest = store.last_change_id()
    store.delete_job(gone)
    _move(store, keep, "running")
    assert store.last_change_id() > newest
