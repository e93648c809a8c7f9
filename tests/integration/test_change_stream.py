"""The change stream on the real pool: live changes, and a client that disconnects and resumes."""

from __future__ import annotations

import json
import time

import pytest
import sseclient

from .gateway import pack_bundle

pytestmark = pytest.mark.integration


def _open(client, **params):
    """An SSE client on GET /jobs/events, reading with the test client's own session (and auth)."""
    headers = {"Accept": "text/event-stream"}
    if "last_event_id" in params:
        headers["Last-Event-ID"] = str(params.pop("last_event_id"))
    resp = client.http.get(client.url + "/jobs/events", params=params, headers=headers, stream=True,
                           timeout=(5, 60))
    assert resp.status_code == 200, resp.text
    return resp, sseclient.SSEClient(resp).events()


def _open_when_free(client, timeout):
    deadline = time.monotonic() + timeout
    while True:
        resp = client.http.get(client.url + "/jobs/events", stream=True, timeout=(5, 60))
        if resp.status_code != 503 or time.monotonic() > deadline:
            assert resp.status_code == 200, resp.text
            return resp
        resp.close()
        time.sleep(0.2)


def _changes(events, until, timeout):
    """Read changes until ``until(change)`` holds (inclusive) or the time runs out."""
    seen = []
    deadline = time.monotonic() + timeout
    for event in events:
        assert event.event == "state"
        change = json.loads(event.data)
        assert int(event.id) == change["id"]
        seen.append(change)
        if until(change) or time.monotonic() > deadline:
            break
    return seen


def test_a_change_arrives_on_an_open_stream_as_it_happens(client):
    resp, events = _open(client, status="completed")
    try:
        job_id = client.submit(pack_bundle("hello"), name="stream-live").json()["job_id"]
        got = _changes(events, until=lambda c: c["job_id"] == job_id, timeout=180)
    finally:
        resp.close()
    mine = [c for c in got if c["job_id"] == job_id]
    assert [(c["state"], c["job_name"]) for c in mine] == [("completed", "stream-live")]
    assert all(c["state"] == "completed" for c in got)


def test_a_client_that_disconnects_and_resumes_sees_every_change_exactly_once(client):
    job_id = client.submit(pack_bundle("sleeper"), name="stream-resume", arguments="3").json()["job_id"]
    resp, events = _open(client, job_id=job_id, last_event_id=0)
    first = _changes(events, until=lambda c: c["state"] == "running", timeout=120)
    resp.close()  # the client goes away mid-job
    assert [c["state"] for c in first] == ["idle", "running"]
    client.wait_for(job_id, "completed", timeout=180)
    resp, events = _open(client, job_id=job_id, last_event_id=first[-1]["id"])
    try:
        rest = _changes(events, until=lambda c: c["state"] == "completed", timeout=60)
    finally:
        resp.close()
    seen = first + rest
    ids = [c["id"] for c in seen]
    assert ids == sorted(set(ids)), "each change once, in order"
    history = client.get(f"/jobs/{job_id}/events").json()
    assert [(c["state"], c["reason"], c["at"]) for c in seen] == [(h["state"], h["reason"], h["at"]) for h in history]


def test_a_stream_ends_when_its_client_goes_and_streams_beyond_the_limit_wait(client):
    """The server notices a vanished client within a poll (not at the next keep-alive, 15 s
    later), so more streams than the limit open one after another; four held open fill it."""
    for _ in range(6):  # max_event_streams is 4
        resp = _open_when_free(client, timeout=10)
        resp.close()
    held = [_open_when_free(client, timeout=10) for _ in range(4)]
    try:
        busy = client.get("/jobs/events", stream=True)
        busy.close()
        assert busy.status_code == 503 and int(busy.headers["Retry-After"]) > 0
    finally:
        for resp in held:
            resp.close()
