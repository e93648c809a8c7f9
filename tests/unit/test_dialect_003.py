"""Seed 003 (workers, jobs and data by header) as a dialect, over the fake schedd and a fake pool.

Each test drives the app as a client of the seed would: ids travel in X-Data-Id, X-Job-Id
and X-Worker-Id; the tracker's cycle (on the fake schedd) moves jobs on where needed.
"""

import re
import time
from pathlib import Path

import falcon.testing
import pytest

from modaclouds_batch.condor import submit_description as sd
from modaclouds_batch.dialects import workers_data
from modaclouds_batch.jobs.states import JobState

from .test_dialect_001_002 import World as SharedWorld
from .test_infra import FakePool

BASE = "/mecrm"


def form(**fields) -> dict:
    """A multipart/form-data body as curl -F sends it: field=(filename, bytes)."""
    boundary = "------------------------d003boundary"
    body = b""
    for name, (filename, content) in fields.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return {"body": body, "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


class FakeProvider:
    name = "local"

    def __init__(self):
        self.started = []

    def validate(self, params):
        pass

    def provision(self, params):
        self.started.append(params)
        return f"exec-{len(self.started):08x}@localhost"

    def retire(self, worker):
        pass


class World(SharedWorld):
    """The dialect tests' world, with the runtimes, worker pool and provider seed 003 reaches."""

    def __init__(self, home: Path, **settings):
        super().__init__(home, **settings)
        self.gateway.submission.runtimes = lambda: {"bash", "python3"}
        self.pool = FakePool("localhost")
        self.gateway.infra.collector = self.pool
        self.gateway.infra.cache_seconds = 0
        self.provider = self.gateway.infra.providers["local"] = FakeProvider()

    def post_data(self, content: bytes, field: str = "file", filename: str = "file") -> str:
        resp = self.http.simulate_post(f"{BASE}/data", **form(**{field: (filename, content)}))
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/plain")
        return resp.text

    def post_job(self, body: dict, **kw):
        return self.http.simulate_post(f"{BASE}/job", json=body, **kw)

    def job(self, job_id: str):
        return self.http.simulate_get(f"{BASE}/job", headers={"X-Job-Id": job_id})

    def finish(self, job_id: str, stdout: str, exit_code: int = 0) -> None:
        super().finish(job_id, exit_code=exit_code, stdout=stdout)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.close()


def a_job(world, runtime="python3", **extra):
    function = world.post_data(b"import sys\nprint(open(sys.argv[1]).read().upper())\n")
    data1 = world.post_data(b"hello\n")
    resp = world.post_job({"data1_id": data1, "function_id": function, "runtime": runtime, **extra})
    assert resp.status_code == 200, resp.text
    return resp.json["job_id"], data1, function


def parts(resp):
    boundary = re.search(r"boundary=(\S+)", resp.headers["content-type"]).group(1)
    chunks = resp.content.split(b"--" + boundary.encode())
    assert chunks[-1].strip() == b"--"
    return [c for c in chunks[1:-1]]


# --- the seam ------------------------------------------------------------------------------

def test_the_table_maps_every_core_state_to_the_seeds_words_or_failed():
    assert set(workers_data.STATES) == set(JobState)
    assert set(workers_data.STATES.values()) == {"Pending", "Processing", "Finished", "Failed"}
    assert workers_data.DIALECT.states is workers_data.STATES


def test_the_index_lists_seed_003(world):
    assert {"name": "Workers, jobs and data", "seed": "003", "base": "/mecrm",
            "docs": "docs/dialect-003-workers-data.md"} in world.http.simulate_get("/").json["apis"]


# --- data ------------------------------------------------------------------------------------

def test_posted_data_is_a_data_object_read_back_as_one_multipart_part_named_by_its_id(world):
    data_id = world.post_data(b"some bytes\n", field="anything", filename="input.txt")
    row = world.store.get_data(data_id)
    assert row["filename"] == data_id and row["size"] == 11  # the seed's server names the file by its id
    resp = world.http.simulate_get(f"{BASE}/data", headers={"X-Data-Id": data_id})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("multipart/form-data; boundary=")
    (part,) = parts(resp)
    assert f'name="file"; filename="{data_id}"'.encode() in part
    assert part.split(b"\r\n\r\n", 1)[1] == b"some bytes\n\r\n"
    assert int(resp.headers["content-length"]) == len(resp.content)
    # the main API's object, the same one
    assert world.http.simulate_get(f"/data/{data_id}").content == b"some bytes\n"


def test_put_replaces_the_content_and_delete_removes_it(world):
    data_id = world.post_data(b"old")
    request = form(file=("f", b"new!"))
    request["headers"]["X-Data-Id"] = data_id
    resp = world.http.simulate_put(f"{BASE}/data", **request)
    assert resp.status_code == 200 and resp.text == data_id
    assert world.http.simulate_get(f"/data/{data_id}").content == b"new!"
    resp = world.http.simulate_delete(f"{BASE}/data", headers={"X-Data-Id": data_id})
    assert resp.status_code == 204 and world.store.get_data(data_id) is None


def test_reg_makes_an_empty_object(world):
    resp = world.http.simulate_post(f"{BASE}/data/reg")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    assert world.store.get_data(resp.text)["size"] == 0


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_a_missing_x_data_id_is_400_naming_the_header(world, method):
    resp = world.http.simulate_request(method, f"{BASE}/data")
    assert resp.status_code == 400
    assert resp.json["field"] == "X-Data-Id" and "X-Data-Id header is required" in resp.json["error"]


def test_data_bodies_that_are_not_one_multipart_part_are_400(world):
    resp = world.http.simulate_post(f"{BASE}/data", body=b"raw", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 400 and "multipart/form-data" in resp.json["error"]
    resp = world.http.simulate_post(f"{BASE}/data", **form(a=("a", b"1"), b=("b", b"2")))
    assert resp.status_code == 400 and resp.json["field"] == "b" and "one part" in resp.json["error"]
    resp = world.http.simulate_post(f"{BASE}/data", body=b"--x\r\nnonsense",
                                    headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert resp.status_code == 400 and "multipart" in resp.json["error"]
    assert world.store.list_data(None, 10, 0)[1] == 0


def test_the_data_size_limit_is_the_setting(tmp_path):
    w = World(tmp_path, dialect_003_max_data_bytes=10)
    try:
        assert w.http.simulate_post(f"{BASE}/data", **form(file=("f", b"x" * 10))).status_code == 200
        resp = w.http.simulate_post(f"{BASE}/data", **form(file=("f", b"x" * 11)))
        assert resp.status_code == 413 and "10-byte limit" in resp.json["error"]
        assert w.store.list_data(None, 10, 0)[1] == 1
    finally:
        w.store.close()


# --- jobs ---------------------------------------------------------------------------------------

def test_a_job_runs_runtime_function_data1_and_its_stdout_becomes_data2(world):
    job_id, data1, function = a_job(world)
    job = world.store.get_job(job_id)
    assert job["command"] == f"python3 ./{function} ./{data1}" and job["runtime"] == "python3"
    files = Path(job["job_dir"]) / sd.FILES_DIR
    assert sorted(p.name for p in files.iterdir()) == sorted([function, data1])
    view = world.job(job_id).json
    data2 = view["data2_id"]
    assert view == {"job_id": job_id, "data1_id": data1, "data2_id": data2, "function_id": function,
                    "runtime": "python3", "status": "Pending", "reason": view["reason"]}
    assert world.store.get_data(data2)["size"] == 0  # registered at once, as the seed's server does
    world.set_status(job_id, 2)
    assert world.job(job_id).json["status"] == "Processing"
    world.finish(job_id, "HELLO\n")
    assert world.job(job_id).json["status"] == "Finished"
    assert world.http.simulate_get(f"/data/{data2}").content == b"HELLO\n"
    assert world.store.get_job(job_id)["answer_id"] == data2
    assert world.store.list_data(None, 10, 0)[1] == 3  # no second answer object


def test_a_given_data2_receives_the_answer_and_outlives_the_job(world):
    slot = world.http.simulate_post(f"{BASE}/data/reg").text
    job_id, _, _ = a_job(world, data2_id=slot)
    assert world.job(job_id).json["data2_id"] == slot
    world.finish(job_id, "out\n")
    assert world.http.simulate_get(f"/data/{slot}").content == b"out\n"
    resp = world.http.simulate_delete(f"{BASE}/job", headers={"X-Job-Id": job_id})
    assert resp.status_code == 204 and world.store.get_job(job_id) is None
    assert world.job(job_id).status_code == 404
    assert world.http.simulate_get(f"/data/{slot}").content == b"out\n"


def test_data2_in_use_by_an_active_job_is_409_and_cannot_be_deleted(world):
    slot = world.http.simulate_post(f"{BASE}/data/reg").text
    a_job(world, data2_id=slot)
    function, data1 = world.post_data(b"print(1)"), world.post_data(b"x")
    resp = world.post_job({"data1_id": data1, "function_id": function, "runtime": "python3", "data2_id": slot})
    assert resp.status_code == 409 and resp.json["field"] == "data2_id" and "already writing" in resp.json["error"]
    assert world.http.simulate_delete(f"{BASE}/data", headers={"X-Data-Id": slot}).status_code == 409


def test_a_failed_job_is_failed_with_its_reason(world):
    job_id, _, _ = a_job(world)
    world.finish(job_id, "", exit_code=1)
    view = world.job(job_id).json
    assert view["status"] == "Failed" and view["reason"]


@pytest.mark.parametrize("body, field, words", [
    ({"function_id": "f.py", "runtime": "python3"}, "function_id", "not a data id"),
    ({"data1_id": "D", "runtime": "python3"}, "function_id", "function_id is required"),
    ({"data1_id": "D", "function_id": "F"}, "runtime", "runtime is required"),
    ({"data1_id": "D", "function_id": "F", "runtime": "python3", "extra": 1}, "extra", "unknown field"),
    ({"data1_id": "D", "function_id": "F", "runtime": 3}, "runtime", "must be a string"),
    ({"data1_id": "F", "function_id": "F", "runtime": "python3"}, "data1_id", "same object"),
    ({"data1_id": "0f2d3b57-9f53-4b8e-9e5a-2b8f0d2c9e11", "function_id": "F", "runtime": "python3"},
     "data1_id", "no data object"),
    ({"data1_id": "D", "function_id": "F", "runtime": "python3", "data2_id": "0f2d3b57-9f53-4b8e-9e5a-2b8f0d2c9e11"},
     "data2_id", "no data object"),
    ({"data1_id": "D", "function_id": "F", "runtime": "ruby"}, "runtime", "no worker offers runtime 'ruby'"),
])
def test_a_bad_job_body_is_400_naming_the_field_and_leaves_nothing(world, body, field, words):
    ids = {"D": world.post_data(b"x"), "F": world.post_data(b"print(1)")}
    body = {k: ids.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    resp = world.post_job(body)
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == field and words in resp.json["error"], resp.json
    assert world.store.count_jobs() == 0 and not world.condor.queue
    assert world.store.list_data(None, 10, 0)[1] == 2  # no output slot left behind


def test_a_runtime_nobody_offers_lists_those_that_exist(world):
    function, data1 = world.post_data(b"x"), world.post_data(b"y")
    resp = world.post_job({"data1_id": data1, "function_id": function, "runtime": "ruby"})
    assert resp.status_code == 400 and resp.json["available"] == ["bash", "python3"]
    assert "workers offer: bash, python3" in resp.json["error"]


def test_keys_match_without_case_as_in_the_seeds_go_server(world):
    function, data1 = world.post_data(b"echo hi"), world.post_data(b"y")
    resp = world.http.simulate_post(f"{BASE}/job", body=f'{{"Data1_Id": "{data1}", "Function_ID": "{function}", '
                                                         f'"Runtime": "bash"}}')
    assert resp.status_code == 200, resp.text
    assert world.store.get_job(resp.json["job_id"])["command"] == f"bash ./{function} ./{data1}"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_a_missing_x_job_id_is_400(world, method):
    resp = world.http.simulate_request(method, f"{BASE}/job", json={"status": "Pending"} if method == "PUT" else None)
    assert resp.status_code == 400 and resp.json["field"] == "X-Job-Id"


def test_a_job_of_the_main_api_is_not_one_of_this_door(world):
    job_id = world.http.simulate_post("/jobs", json={"command": "true"}).json["job_id"]
    resp = world.job(job_id)
    assert resp.status_code == 404 and "/jobs/" in resp.json["error"]


# --- PUT /job: the seed's steps, checked against the schedd --------------------------------------

def put(world, job_id, status, **extra):
    return world.http.simulate_put(f"{BASE}/job", headers={"X-Job-Id": job_id}, json={"status": status, **extra})


def test_a_put_that_agrees_with_the_schedd_is_204(world):
    job_id, _, _ = a_job(world)
    assert put(world, job_id, "Pending").status_code == 204
    world.condor.queue[job_id].update(JobStatus=2)  # the tracker has not seen it yet: the PUT asks the schedd
    assert put(world, job_id, "Processing").status_code == 204
    assert world.job(job_id).json["status"] == "Processing"


def test_a_put_that_contradicts_the_schedd_is_409_saying_why(world):
    job_id, _, _ = a_job(world)
    resp = put(world, job_id, "Processing")
    assert resp.status_code == 409 and "HTCondor reports" in resp.json["error"] and resp.json["status"] == "Pending"


@pytest.mark.parametrize("held, status", [(1, "Finished"), (2, "Pending")])
def test_a_put_that_skips_or_goes_back_is_409(world, held, status):
    job_id, _, _ = a_job(world)
    world.set_status(job_id, held)
    resp = put(world, job_id, status)
    assert resp.status_code == 409 and "not a step" in resp.json["error"]


def test_finished_takes_no_step_back_and_failed_takes_none(world):
    job_id, _, _ = a_job(world)
    world.finish(job_id, "x")
    assert put(world, job_id, "Processing").status_code == 409
    assert put(world, job_id, "Finished").status_code == 204
    other, _, _ = a_job(world)
    world.finish(other, "", exit_code=2)
    resp = put(world, other, "Finished")
    assert resp.status_code == 409 and "Failed" in resp.json["error"]


@pytest.mark.parametrize("body, words", [
    ({"status": "Done"}, "unknown status 'Done'"),
    ({"status": "Failed"}, "HTCondor's to set"),
    ({}, "status is required"),
])
def test_an_unknown_status_is_400(world, body, words):
    job_id, _, _ = a_job(world)
    resp = world.http.simulate_put(f"{BASE}/job", headers={"X-Job-Id": job_id}, json=body)
    assert resp.status_code == 400 and words in resp.json["error"] and "Pending, Processing, Finished" in resp.json["error"]


def test_a_put_changing_a_fixed_field_is_409(world):
    job_id, _, _ = a_job(world)
    resp = put(world, job_id, "Pending", runtime="bash")
    assert resp.status_code == 409 and resp.json["field"] == "runtime"


# --- workers --------------------------------------------------------------------------------------

def test_post_worker_asks_the_provider_for_a_node_with_those_runtimes(world):
    resp = world.http.simulate_post(f"{BASE}/worker", json={"Runtime": ["python3", "bash"]})
    assert resp.status_code == 200, resp.text
    assert resp.json == {"worker_id": "exec-00000001@localhost"}
    assert world.provider.started == [{"runtimes": ["python3", "bash"]}]


@pytest.mark.parametrize("body", [{}, {"runtime": []}, {"runtime": "bash"}, {"runtime": ["bash"], "cpu": 2}])
def test_post_worker_needs_a_list_of_runtimes(world, body):
    resp = world.http.simulate_post(f"{BASE}/worker", json=body)
    assert resp.status_code == 400 and not world.provider.started


def test_get_worker_by_header_or_body_and_a_missing_id_is_400(world):
    resp = world.http.simulate_get(f"{BASE}/worker", headers={"X-Worker-Id": "localhost"})
    assert resp.status_code == 200 and resp.json == {"worker_id": "localhost", "runtime": ["bash"]}
    resp = world.http.simulate_get(f"{BASE}/worker", json={"worker_id": "localhost"})
    assert resp.status_code == 200
    resp = world.http.simulate_get(f"{BASE}/worker")
    assert resp.status_code == 400 and resp.json["field"] == "X-Worker-Id"
    assert world.http.simulate_get(f"{BASE}/worker", headers={"X-Worker-Id": "nobody"}).status_code == 404


def test_the_contract_answers_once_htcondor_matched_a_job_to_the_worker(world, monkeypatch):
    monkeypatch.setattr(workers_data, "POLL_SECONDS", 0.01)
    _contract_resource(world).wait_seconds = 0.05
    headers = {"X-Worker-Id": "localhost"}
    assert world.http.simulate_get(f"{BASE}/worker/contract", headers=headers).status_code == 204
    job_id, data1, function = a_job(world)
    world.set_status(job_id, 2, RemoteHost="slot1_1@localhost")
    resp = world.http.simulate_get(f"{BASE}/worker/contract", headers=headers)
    assert resp.status_code == 200, resp.text
    data2 = world.job(job_id).json["data2_id"]
    assert resp.json == {"worker_id": "localhost", "job_id": job_id, "data1_id": data1, "data2_id": data2,
                         "function_id": function, "runtime": "python3"}


def _contract_resource(world):
    resource, _, _, _ = world.http.app._router.find(f"{BASE}/worker/contract")
    return resource


def test_delete_worker_drains_then_retires_it(world):
    world.http.simulate_post(f"{BASE}/worker", json={"runtime": ["bash"]})
    name = "exec-00000001@localhost"
    world.pool.startds[name] = world.pool.collector_copy[name] = False
    resp = world.http.simulate_delete(f"{BASE}/worker", headers={"X-Worker-Id": name})
    assert resp.status_code == 204
    deadline = time.monotonic() + 5
    while world.store.worker_requests(1)[0]["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert world.store.worker_requests(1)[0]["status"] == "done"
    assert world.pool.drains == [(name, "graceful")]


# --- isolation, as every door: tokens on ------------------------------------------------------------

@pytest.fixture
def users(tmp_path):
    from modaclouds_batch.app import wsgi_app

    w = World(tmp_path / "home", auth=True)
    app = wsgi_app(w.gateway)

    def client(user, role="user"):
        token, _ = w.gateway.tokens.create(user, role, label="unit tests")
        return falcon.testing.TestClient(app, headers={"Authorization": f"Bearer {token}", "Host": "localhost:5000"})

    yield w, client("alice"), client("bob"), client("root", "admin")
    w.store.close()


def test_users_see_only_their_own_data_and_jobs_through_the_headers(users):
    world, alice, bob, _ = users
    function = alice.simulate_post(f"{BASE}/data", **form(file=("f", b"print(1)"))).text
    data1 = alice.simulate_post(f"{BASE}/data", **form(file=("d", b"x"))).text
    job_id = alice.simulate_post(f"{BASE}/job", json={"data1_id": data1, "function_id": function,
                                                      "runtime": "python3"}).json["job_id"]
    assert bob.simulate_get(f"{BASE}/data", headers={"X-Data-Id": data1}).status_code == 404
    assert bob.simulate_get(f"{BASE}/job", headers={"X-Job-Id": job_id}).status_code == 404
    assert bob.simulate_delete(f"{BASE}/job", headers={"X-Job-Id": job_id}).status_code == 404
    resp = bob.simulate_post(f"{BASE}/job", json={"data1_id": data1, "function_id": function, "runtime": "python3"})
    assert resp.status_code == 400 and resp.json["field"] == "function_id"
    assert alice.simulate_get(f"{BASE}/job", headers={"X-Job-Id": job_id}).status_code == 200
    assert world.store.get_job(job_id)["owner"] == "alice"


def test_an_admins_job_cannot_answer_into_a_users_object(users):
    _, alice, _, root = users
    slot = alice.simulate_post(f"{BASE}/data/reg").text
    function = root.simulate_post(f"{BASE}/data", **form(file=("f", b"print(1)"))).text
    resp = root.simulate_post(f"{BASE}/job", json={"function_id": function, "runtime": "python3", "data2_id": slot})
    assert resp.status_code == 403 and resp.json["field"] == "data2_id" and "belongs to alice" in resp.json["error"]


def test_worker_routes_are_for_admins(users):
    _, alice, _, root = users
    assert alice.simulate_post(f"{BASE}/worker", json={"runtime": ["bash"]}).status_code == 403
    assert alice.simulate_get(f"{BASE}/worker", headers={"X-Worker-Id": "localhost"}).status_code == 403
    assert alice.simulate_get(f"{BASE}/worker/contract", headers={"X-Worker-Id": "localhost"}).status_code == 403
    assert root.simulate_get(f"{BASE}/worker", headers={"X-Worker-Id": "localhost"}).status_code == 200


def test_contract_waits_past_the_limit_are_503_with_retry_after(world):
    resource = _contract_resource(world)
    for _ in range(workers_data.MAX_CONTRACT_WAITS):
        resource._waits.acquire()
    resp = world.http.simulate_get(f"{BASE}/worker/contract", headers={"X-Worker-Id": "localhost"})
    assert resp.status_code == 503 and resp.headers["retry-after"]


def test_another_users_data_id_in_a_main_api_job_is_404_like_an_unknown_one(users):
    """for_job re-raised NotYours without its target: a TypeError, so a 500."""
    _, alice, bob, _ = users
    tool = alice.simulate_post(f"{BASE}/data", **form(file=("f", b"#!/bin/sh\n"))).text
    resp = bob.simulate_post("/jobs", json={"command": "./tool", "binary": tool})
    assert resp.status_code == 404 and resp.json["error"].startswith("binary: no data object")


def test_a_job_posted_again_with_its_idempotency_key_is_the_same_job_and_answer_object(world):
    function = world.post_data(b"print('hi')\n")
    body = {"function_id": function, "runtime": "python3"}
    first = world.post_job(body, headers={"Idempotency-Key": "mecrm-1"})
    again = world.post_job(body, headers={"Idempotency-Key": "mecrm-1"})
    assert first.status_code == again.status_code == 200, first.text
    assert again.json == first.json and again.headers["Idempotent-Replayed"] == "true"
    assert world.store.count_jobs() == 1
    assert world.store.list_data(None, 10, 0)[1] == 2  # the function and one answer object
    other = world.post_job({**body, "runtime": "bash"}, headers={"Idempotency-Key": "mecrm-1"})
    assert other.status_code == 422 and world.store.count_jobs() == 1
