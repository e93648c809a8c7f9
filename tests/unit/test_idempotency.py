"""Idempotency-Key on submissions (issue 19, item 1), over the fake schedd.

Each test is a client retrying a POST: one job however often it asks, the first answer
again, 422 for another request under the key, 409 while the first is answered, and the
keyed jobs of a gateway that died after the schedd took them found again at the next start.
"""

import io
import tarfile
import threading

import falcon.testing
import pytest

from modaclouds_batch.app import build_gateway, wsgi_app
from modaclouds_batch.api import idempotency
from modaclouds_batch.settings import load_settings

from .fakes import FakeCondor, use_condor

HOST = {"Host": "localhost:5000"}


class Crash(BaseException):
    """The process dies here: nothing after it runs, no handler sees it."""


def bundle() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        script = b"#!/bin/sh\necho hi\n"
        info = tarfile.TarInfo("run.sh")
        info.size, info.mode = len(script), 0o755
        tar.addfile(info, io.BytesIO(script))
    return buf.getvalue()


def multipart(boundary: str, name: str = "keyed") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"job-name\"\r\n\r\n{name}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"job-bundle\"; filename=\"b.tar.gz\"\r\n"
            "Content-Type: application/gzip\r\n\r\n").encode() + bundle() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class World:
    def __init__(self, home, condor=None):
        self.gateway = build_gateway(load_settings(overrides={"home": home}, environ={}))
        self.condor = condor or FakeCondor()
        use_condor(self.gateway, self.condor)
        self.store = self.gateway.store
        self.http = falcon.testing.TestClient(wsgi_app(self.gateway), headers=HOST)
        self.tokens = {user: self.gateway.tokens.create(user, "user")[0] for user in ("alice", "bob")}

    def post(self, path="/jobs", key="k-1", user="alice", json=None, **kw):
        headers = {"Authorization": f"Bearer {self.tokens[user]}", **kw.pop("headers", {})}
        if key is not None:
            headers[idempotency.HEADER] = key
        return self.http.simulate_post(path, json=json, headers=headers, **kw)

    def submitted(self) -> int:
        return getattr(self.condor, "clusters", 0)

    def restart(self) -> "World":
        """A new process on the same home and schedd, as ``serve`` starts it."""
        self.store.close()
        world = World(self.gateway.settings.home, self.condor)
        unsettled = world.gateway.submission.recover_keyed_submissions(at_start=True)
        world.store.clear_intents(keep=unsettled)
        return world


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.close()


def test_a_retry_with_the_same_key_gets_the_first_answer_and_no_second_job(world):
    first = world.post(json={"command": "echo hi", "name": "keyed"})
    again = world.post(json={"command": "echo hi", "name": "keyed"})
    assert first.status_code == again.status_code == 201, first.text
    assert again.json == first.json
    assert again.headers["Location"] == first.headers["Location"] == f"/jobs/{first.json['job_id']}"
    assert again.headers[idempotency.REPLAYED_HEADER] == "true"
    assert idempotency.REPLAYED_HEADER not in first.headers
    assert world.submitted() == 1 and world.store.count_jobs() == 1


def test_the_same_key_with_another_request_is_422_and_submits_nothing(world):
    assert world.post(json={"command": "echo hi"}).status_code == 201
    other = world.post(json={"command": "echo bye"})
    assert other.status_code == 422, other.text
    assert other.json["field"] == "Idempotency-Key" and "another request" in other.json["error"]
    assert world.post(path="/async/jobs", json={"command": "echo hi"}).status_code == 422  # another path
    assert world.submitted() == 1


def test_keys_are_per_user(world):
    alice = world.post(json={"command": "echo hi"})
    bob = world.post(json={"command": "echo hi"}, user="bob")
    assert alice.status_code == bob.status_code == 201
    assert alice.json["job_id"] != bob.json["job_id"]
    assert world.submitted() == 2


def test_no_key_no_memory(world):
    assert world.post(key=None, json={"command": "echo hi"}).status_code == 201
    assert world.post(key=None, json={"command": "echo hi"}).status_code == 201
    assert world.submitted() == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "caf\u00e9"])
def test_a_malformed_key_is_400(world, key):
    resp = world.post(key=key, json={"command": "echo hi"})
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == "Idempotency-Key" and "255" in resp.json["error"]
    assert world.submitted() == 0


def test_the_longest_key_is_taken(world):
    assert world.post(key="k" * 255, json={"command": "echo hi"}).status_code == 201


def test_a_form_sent_again_with_a_new_boundary_is_the_same_request(world):
    body, content_type = multipart("boundary-one")
    first = world.post(body=body, headers={"Content-Type": content_type})
    body, content_type = multipart("another-boundary-2")
    again = world.post(body=body, headers={"Content-Type": content_type})
    assert first.status_code == again.status_code == 201, first.text
    assert again.json["job_id"] == first.json["job_id"] and world.submitted() == 1
    body, content_type = multipart("boundary-three", name="renamed")
    assert world.post(body=body, headers={"Content-Type": content_type}).status_code == 422


def test_a_retry_while_the_first_is_answered_is_409_with_retry_after(world):
    release, entered = threading.Event(), threading.Event()
    submit = world.condor.submit_spooled

    def slow_submit(*args, **kwargs):
        entered.set()
        assert release.wait(30)
        return submit(*args, **kwargs)

    world.condor.submit_spooled = slow_submit
    answers = []
    first = threading.Thread(target=lambda: answers.append(world.post(json={"command": "echo hi"})))
    first.start()
    try:
        assert entered.wait(30)
        busy = world.post(json={"command": "echo hi"})
        assert busy.status_code == 409, busy.text
        assert int(busy.headers["Retry-After"]) > 0 and busy.json["field"] == "Idempotency-Key"
    finally:
        release.set()
        first.join(30)
    assert answers[0].status_code == 201
    assert world.post(json={"command": "echo hi"}).json == answers[0].json
    assert world.submitted() == 1


def test_a_503_releases_the_key_so_a_retry_submits(world):
    world.condor.fail = {"submit"}
    down = world.post(json={"command": "echo hi"})
    assert down.status_code == 503, down.text
    world.condor.fail = set()
    up = world.post(json={"command": "echo hi"})
    assert up.status_code == 201 and idempotency.REPLAYED_HEADER not in up.headers
    assert world.store.count_jobs() == 1


def test_a_refusal_the_same_request_meets_again_is_replayed(world):
    refused = world.post(json={"command": "echo hi", "ttl": "soon"})
    assert refused.status_code == 400
    again = world.post(json={"command": "echo hi", "ttl": "soon"})
    assert again.status_code == 400 and again.json == refused.json
    assert again.headers[idempotency.REPLAYED_HEADER] == "true"


def test_an_array_is_replayed_whole(world):
    first = world.post(json={"command": "echo hi", "count": 3})
    again = world.post(json={"command": "echo hi", "count": 3})
    assert first.status_code == again.status_code == 201, first.text
    assert again.json["id"] == first.json["id"] and again.headers["Location"] == f"/arrays/{first.json['id']}"
    assert world.submitted() == 1 and world.store.count_jobs() == 3


@pytest.mark.parametrize("path, body, status", [
    ("/api/job/run", {"command": "echo hi"}, 201),
    ("/async/jobs", {"command": "echo hi"}, 202),
])
def test_dialect_submit_routes_take_the_key(world, path, body, status):
    first = world.post(path=path, json=body)
    again = world.post(path=path, json=body)
    assert first.status_code == again.status_code == status, first.text
    assert again.json == first.json and again.headers.get("Location") == first.headers.get("Location")
    assert world.submitted() == 1


def test_expired_keys_are_swept_and_a_late_retry_is_a_new_submission(world):
    first = world.post(json={"command": "echo hi"})
    world.store.db.execute("update idempotency_keys set expires_at = '2000-01-01T00:00:00Z'")
    late = world.post(json={"command": "echo hi"})
    assert late.status_code == 201 and late.json["job_id"] != first.json["job_id"]
    world.store.db.execute("update idempotency_keys set expires_at = '2000-01-01T00:00:00Z'")
    assert world.gateway.retention.sweep_expired()["idempotency_keys"] == 1
    assert world.store.idempotency_key("alice", "k-1") is None


def crash_at(world, attribute, target):
    def die(*args, **kwargs):
        raise Crash(attribute)
    setattr(target, attribute, die)


def test_a_gateway_killed_after_the_schedd_took_the_job_answers_the_retry_with_that_job(world, tmp_path):
    submit = world.condor.submit_spooled
    crash_at(world, "insert_jobs", world.store)  # the schedd has the job; its row is never written
    with pytest.raises(Crash):
        world.post(json={"command": "echo hi", "name": "survivor"})
    assert world.submitted() == 1 and len(world.condor.queue) == 1
    (job_id,) = world.condor.queue
    world = world.restart()
    world.condor.submit_spooled = submit
    retry = world.post(json={"command": "echo hi", "name": "survivor"})
    assert retry.status_code == 201, retry.text
    assert retry.json["job_id"] == job_id and retry.json["name"] == "survivor"
    assert retry.headers["Location"] == f"/jobs/{job_id}" and retry.headers[idempotency.REPLAYED_HEADER] == "true"
    assert world.submitted() == 1 and world.store.count_jobs() == 1
    assert world.store.intended([job_id]) == set()
    assert world.post(json={"command": "echo hi", "name": "survivor"}).json == retry.json  # now kept as sent
    world.store.close()


def test_a_gateway_killed_before_the_submit_lets_the_retry_submit(world):
    crash_at(world, "submit_spooled", world.condor)
    with pytest.raises(Crash):
        world.post(json={"command": "echo hi"})
    world.condor = FakeCondor()
    world = world.restart()
    assert world.store.idempotency_key("alice", "k-1") is None
    assert world.post(json={"command": "echo hi"}).status_code == 201
    assert world.submitted() == 1
    world.store.close()


def test_a_gateway_killed_after_recording_the_job_rebuilds_the_answer(world):
    def lost(*args):
        raise RuntimeError("the process died before keeping the answer")

    world.store.finish_idempotency_key = lost
    first = world.post(json={"command": "echo hi"})  # answered, but its answer never kept
    assert first.status_code == 201
    assert world.store.idempotency_key("alice", "k-1")["state"] == "processing"  # as a dead process leaves it
    world = world.restart()
    assert world.store.idempotency_key("alice", "k-1")["state"] == "recovered"
    assert world.post(json={"command": "echo hi"}).json["job_id"] == first.json["job_id"]
    assert world.submitted() == 1
    world.store.close()


def test_a_schedd_silent_at_start_leaves_the_key_unsettled_until_it_answers(world):
    crash_at(world, "insert_jobs", world.store)
    with pytest.raises(Crash):
        world.post(json={"command": "echo hi"})
    (job_id,) = world.condor.queue
    world.condor.fail = {"query"}
    world = world.restart()
    assert world.store.intended([job_id]) == {job_id}  # not an orphan for the tracker
    assert world.post(json={"command": "echo hi"}).status_code == 409
    world.condor.fail = set()
    assert world.gateway.submission.recover_keyed_submissions() == []
    assert world.post(json={"command": "echo hi"}).json["job_id"] == job_id
    assert world.submitted() == 1
    world.store.close()


def test_tes_and_workers_data_routes_take_the_key(world):
    task = {"executors": [{"image": "alpine", "command": ["echo", "42"]}]}
    first = world.post(path="/ga4gh/tes/v1/tasks", json=task)
    again = world.post(path="/ga4gh/tes/v1/tasks", json=task)
    assert first.status_code == again.status_code == 200, first.text
    assert again.json == first.json and world.submitted() == 1


SUBMIT_ROUTES = {("POST", "/jobs"), ("POST", "/api/job/run"), ("POST", "/async/jobs"), ("POST", "/mecrm/job"),
                 ("POST", "/ga4gh/tes/v1/tasks"), ("POST", "/slots/job/new/{worker_id}")}


def test_every_submit_route_is_idempotent_and_described_so(world):
    from modaclouds_batch.app import create_app
    from modaclouds_batch.dialects import all_dialects, openapi_description

    from .test_openapi import served_routes

    app = create_app(world.gateway)
    resources = {}
    nodes = list(app._router._roots)
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children)
        if node.resource is not None:
            resources[node.uri_template] = node.resource
    keyed = {(method, path) for method, path in served_routes(app)
             if getattr(getattr(resources[path], f"on_{method.lower()}"), "idempotent", False)}
    assert keyed >= SUBMIT_ROUTES
    spec = openapi_description(all_dialects())
    for method, path in keyed:
        operation = spec["paths"][path][method.lower()]
        assert {"$ref": "#/components/parameters/IdempotencyKey"} in operation.get("parameters", []), path
        assert {"409", "422"} <= set(operation["responses"]), path
