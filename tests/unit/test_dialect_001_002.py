"""Seed 001 (job manager) and seed 002 (long-running jobs) as dialects, over the fake schedd.

Each test drives the falcon app as a client of that seed would; the tracker's cycle (on
the fake schedd) moves jobs on where a test needs a job to run or finish.
"""

from pathlib import Path

import falcon.testing
import pytest

from modaclouds_batch.app import build_gateway, create_app
from modaclouds_batch.condor import submit_description as sd
from modaclouds_batch.dialects import job_manager, long_running
from modaclouds_batch.jobs.states import JobState
from modaclouds_batch.settings import load_settings
from modaclouds_batch.timefmt import now_iso

from .fakes import FakeCondor, tracker_without_sweeps, use_condor

SAMPLE_RUN_BODY = '{\n    "command": "uname -a | wc -l",\n}'  # the seed's sample, trailing comma and all
URLENCODED = {"Content-Type": "application/x-www-form-urlencoded"}  # what curl --data sends


class World:
    def __init__(self, home: Path, auth: bool = False, **settings):
        self.gateway = build_gateway(load_settings(overrides={"home": home, "auth": auth, **settings}, environ={}))
        self.condor = FakeCondor()
        use_condor(self.gateway, self.condor)  # and no collector in unit tests
        self.store = self.gateway.store
        self.tracker = tracker_without_sweeps(self.gateway)
        self.http = falcon.testing.TestClient(create_app(self.gateway))

    def run(self, body: str = SAMPLE_RUN_BODY, headers=URLENCODED, **kw):
        return self.http.simulate_post("/api/job/run", body=body, headers=headers, **kw)

    def finish(self, job_id: str, exit_code: int = 0, stdout: str = "1\n") -> None:
        """The schedd says the job completed; its outputs are 'retrieved' into its folder."""
        job_dir = Path(self.store.get_job(job_id)["job_dir"])
        (job_dir / sd.STDOUT_FILE).write_text(stdout)
        (job_dir / sd.STDERR_FILE).write_text("")
        self.condor.queue[job_id].update(JobStatus=4, ExitCode=exit_code)
        self.tracker.run_cycle()

    def set_status(self, job_id: str, status: int, **ad) -> None:
        self.condor.queue[job_id].update(JobStatus=status, **ad)
        self.tracker.run_cycle()

    def nothing_left(self) -> bool:
        jobs_dir = Path(self.gateway.settings.jobs_dir)
        return self.store.count_jobs() == 0 and not (jobs_dir.is_dir() and any(jobs_dir.iterdir())) and not self.condor.queue


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.close()


def upload(world, name: str, content: bytes) -> str:
    resp = world.http.simulate_post("/data", body=content, params={"filename": name},
                                    headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 201, resp.text
    return resp.json["id"]


# --- the seam -------------------------------------------------------------------------

@pytest.mark.parametrize("dialect, words", [
    (job_manager, {"SUBMITTED", "SCHEDULED", "RUNNING", "DONE", "FAILED", "CANCELLED"}),
    (long_running, {"started", "running", "cancelled", "complete", "failed"}),
])
def test_each_table_maps_every_core_state_to_one_of_its_seeds_words(dialect, words):
    assert set(dialect.STATES) == set(JobState)
    assert set(dialect.STATES.values()) <= words
    assert dialect.DIALECT.states is dialect.STATES


def test_the_index_lists_both_dialects_with_their_bases_and_docs(world):
    apis = world.http.simulate_get("/").json["apis"]
    assert {"name": "Job manager", "seed": "001", "base": "/api/job",
            "docs": "docs/dialect-001-job-manager.md"} in apis
    assert {"name": "Long-running jobs", "seed": "002", "base": "/async/jobs",
            "docs": "docs/dialect-002-long-running.md"} in apis


# --- seed 001: run ----------------------------------------------------------------------

def test_the_seeds_sample_run_call_as_curl_sends_it_is_201_with_the_job_id(world):
    resp = world.run()
    assert resp.status_code == 201, resp.text
    job_id = resp.json["job_id"]
    assert resp.json == {"job_id": job_id}
    assert resp.headers["location"] == f"/api/job/job_info/{job_id}"
    job = world.store.get_job(job_id)
    assert job["kind"] == "command" and job["command"] == "uname -a | wc -l"
    assert job_id in world.condor.queue


def test_run_takes_a_binary_input_files_and_ttl_from_data(world):
    tool = upload(world, "tool.sh", b"#!/bin/sh\ncat \"$@\"\n")
    a, b = upload(world, "a.txt", b"one\n"), upload(world, "b.txt", b"two\n")
    body = f'{{"command": "./tool.sh a.txt b.txt", "binary": "{tool}", "input_files": ["{a}", "{b}",], "ttl": 600,}}'
    resp = world.run(body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 201, resp.text
    job = world.store.get_job(resp.json["job_id"])
    files = Path(job["job_dir"]) / sd.FILES_DIR
    assert sorted(p.name for p in files.iterdir()) == ["a.txt", "b.txt", "tool.sh"]
    assert job["ttl"] == 600 and job["expires_at"]


def test_a_ttl_of_zero_means_no_ttl(world):
    resp = world.run('{"command": "true", "ttl": 0}')
    assert resp.status_code == 201, resp.text
    assert world.store.get_job(resp.json["job_id"])["expires_at"] is None


@pytest.mark.parametrize("body, field, words", [
    ("{}", "command", "command is required"),
    ('{"command": ""}', "command", "command is required"),
    ('{"command": ["ls"]}', "command", "command is required"),
    ('{"command": "ls", "ttl": -1}', "ttl", "non-negative"),
    ('{"command": "ls", "ttl": "60"}', "ttl", "non-negative"),
    ('{"command": "ls", "ttl": 1.5}', "ttl", "non-negative"),
    ('{"command": "ls", "ttl": true}', "ttl", "non-negative"),
    ('{"command": "ls", "binary": "tool"}', "binary", "not a data id"),
    ('{"command": "ls", "binary": "0f2d3b57-9f53-4b8e-9e5a-2b8f0d2c9e11"}', "binary", "no data object"),
    ('{"command": "ls", "input_files": "a"}', "input_files", "list of data ids"),
    ('{"command": "ls", "input_files": ["0f2d3b57-9f53-4b8e-9e5a-2b8f0d2c9e11"]}', "input_files", "no data object"),
    ('{"command": "ls", "comand": "ls"}', "comand", "unknown field"),
])
def test_a_bad_run_body_is_400_naming_the_field_and_leaves_nothing(world, body, field, words):
    resp = world.run(body)
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == field and words in resp.json["error"]
    assert world.nothing_left()


@pytest.mark.parametrize("body", ["command=uname", "[1, 2]", '{"command": "ls"', b"\xff\xfe{"])
def test_a_body_that_is_not_a_json_object_says_so(world, body):
    resp = world.run(body)
    assert resp.status_code == 400, resp.text
    assert "JSON" in resp.json["error"] and '{"command": "uname -a | wc -l"}' in resp.json["error"]
    assert world.nothing_left()


def test_escaped_surrogate_pairs_are_joined_and_a_lone_half_is_400(world):
    """json5 keeps \\uD83D\\uDE00 as two surrogates, which no answer could encode (the fuzzer's 500)."""
    resp = world.run(r'{"command": "echo \ud83d\ude00", "\ud83d\ude00": 1}')
    assert resp.status_code == 400 and "unknown field '\U0001f600'" in resp.json["error"]
    resp = world.run(r'{"command": "echo \ud83d\ude00"}')
    assert resp.status_code == 201, resp.text
    assert world.store.get_job(resp.json["job_id"])["command"] == "echo \U0001f600"
    resp = world.run(r'{"command": "echo \ud83d"}')
    assert resp.status_code == 400 and "surrogate" in resp.json["error"]


# --- seed 001: job_info, list_jobs -----------------------------------------------------------

@pytest.mark.parametrize("status, ad, word", [
    (1, {}, "SCHEDULED"),
    (2, {}, "RUNNING"),
    (7, {}, "RUNNING"),
    (5, {"HoldReasonCode": 1, "HoldReason": "held by an admin"}, "SCHEDULED"),
])
def test_job_info_words_active_states_with_no_answer(world, status, ad, word):
    job_id = world.run().json["job_id"]
    world.set_status(job_id, status, **ad)
    resp = world.http.simulate_get(f"/api/job/job_info/{job_id}")
    assert resp.status_code == 200
    assert resp.json["state"] == word and resp.json["answer_id"] is None
    if status == 5:
        assert "held by an admin" in resp.json["reason"]


def test_job_info_gives_the_answer_once_done_and_failed_once_failed(world):
    done, failed = world.run().json["job_id"], world.run().json["job_id"]
    world.finish(done, stdout="1\n")
    world.finish(failed, exit_code=3)
    info = world.http.simulate_get(f"/api/job/job_info/{done}").json
    assert info["state"] == "DONE"
    assert world.http.simulate_get(f"/data/{info['answer_id']}").text == "1\n"
    assert world.http.simulate_get(f"/api/job/job_info/{failed}").json["state"] == "FAILED"


def test_job_info_is_400_for_a_malformed_id_404_for_an_unknown_one_410_once_expired(world):
    assert world.http.simulate_get("/api/job/job_info/42").status_code == 400
    assert world.http.simulate_get("/api/job/job_info/0f2d3b57-9f53-4b8e-9e5a-2b8f0d2c9e11").status_code == 404
    job_id = world.run('{"command": "true", "ttl": 5}').json["job_id"]
    world.store.mark_expired(job_id, now_iso())
    resp = world.http.simulate_get(f"/api/job/job_info/{job_id}")
    assert resp.status_code == 410 and "expired" in resp.json["error"]


@pytest.mark.parametrize("path", ["/api/job/list_jobs", "/api/list_jobs"])
def test_list_jobs_answers_ids_newest_first_and_filters_by_state(world, path):
    first, second = world.run().json["job_id"], world.run().json["job_id"]
    world.set_status(second, 2)
    assert world.http.simulate_get(path).json == {"job_ids": [second, first]}
    assert world.http.simulate_get(path, params={"state": "RUNNING"}).json == {"job_ids": [second]}
    assert world.http.simulate_get(path, params={"state": "scheduled,done"}).json == {"job_ids": [first]}
    assert world.http.simulate_get(path, params={"state": "SUBMITTED"}).json == {"job_ids": []}
    assert world.http.simulate_get(path, params={"created_after": "2999-01-01T00:00:00Z"}).json == {"job_ids": []}


@pytest.mark.parametrize("params, field", [
    ({"state": "SLEEPING"}, "state"),
    ({"created_after": "yesterday"}, "created_after"),
    ({"owner": "bob"}, "owner"),
    ({"limit": "0"}, "limit"),
])
def test_a_bad_list_filter_is_400(world, params, field):
    resp = world.http.simulate_get("/api/job/list_jobs", params=params)
    assert resp.status_code == 400, resp.text
    assert field in resp.text


def test_a_user_asking_for_another_users_jobs_is_403_an_admin_may(tmp_path):
    world = World(tmp_path, auth=True)
    try:
        alice, _ = world.gateway.tokens.create("alice", "user")
        root, _ = world.gateway.tokens.create("root", "admin")
        as_alice = {**URLENCODED, "Authorization": f"Bearer {alice}"}
        job_id = world.run(headers=as_alice).json["job_id"]
        mine = world.http.simulate_get("/api/list_jobs", params={"user": "alice"}, headers=as_alice)
        assert mine.json == {"job_ids": [job_id]}
        theirs = world.http.simulate_get("/api/list_jobs", params={"user": "bob"}, headers=as_alice)
        assert theirs.status_code == 403 and "error" in theirs.json
        admin = world.http.simulate_get("/api/list_jobs", params={"user": "alice"},
                                        headers={"Authorization": f"Bearer {root}"})
        assert admin.json == {"job_ids": [job_id]}
    finally:
        world.store.close()


# --- seed 001: cancel and delete -----------------------------------------------------------

def test_cancel_stops_the_job_and_keeps_its_record_as_cancelled(world):
    job_id = world.run().json["job_id"]
    resp = world.http.simulate_post("/api/job/cancel", body=f'{{\n    "job_id": "{job_id}",\n}}', headers=URLENCODED)
    assert resp.status_code == 200, resp.text
    assert resp.json == {"job_id": job_id}
    assert ("remove", f'{sd.jobs_constraint(world.store.instance_id, [job_id])}') in world.condor.calls
    world.tracker.run_cycle()  # the schedd's history says removed
    assert world.http.simulate_get(f"/api/job/job_info/{job_id}").json["state"] == "CANCELLED"


def test_cancelling_a_finished_job_is_400_in_the_seeds_words(world):
    job_id = world.run().json["job_id"]
    world.finish(job_id)
    resp = world.http.simulate_post("/api/job/cancel", body=f'{{"job_id": "{job_id}"}}', headers=URLENCODED)
    assert resp.status_code == 400 and "already DONE" in resp.json["error"]


@pytest.mark.parametrize("body, status", [
    ("{}", 400), ('{"job_id": 5}', 400), ('{"job_id": "nope"}', 400),
    ('{"job_id": "0f2d3b57-9f53-4b8e-9e5a-2b8f0d2c9e11"}', 404),
])
def test_cancel_and_delete_need_a_job_id_they_know(world, body, status):
    assert world.http.simulate_post("/api/job/cancel", body=body).status_code == status
    assert world.http.simulate_delete("/api/job/delete", body=body).status_code == status


def test_delete_of_a_finished_job_removes_record_artifacts_and_answer(world):
    job_id = world.run().json["job_id"]
    world.finish(job_id)
    job = world.store.get_job(job_id)
    resp = world.http.simulate_delete("/api/job/delete", body=f'{{"job_id": "{job_id}",}}', headers=URLENCODED)
    assert resp.status_code == 200 and resp.json == {"job_id": job_id}
    assert world.http.simulate_get(f"/api/job/job_info/{job_id}").status_code == 404
    assert not Path(job["job_dir"]).exists()
    assert world.store.get_data(job["answer_id"]) is None
    assert world.store.job_events(job_id) == [] and world.store.job_notifications(job_id) == []


def test_delete_at_the_seeds_sample_url_removes_an_active_job_from_the_schedd_too(world):
    job_id = world.run().json["job_id"]
    resp = world.http.simulate_delete("/api/job/cancel", body=f'{{"job_id": "{job_id}",}}', headers=URLENCODED)
    assert resp.status_code == 200, resp.text
    assert job_id not in world.condor.queue and world.nothing_left()
    world.tracker.run_cycle()  # the tracker finds nothing to record for the deleted job


def test_delete_keeps_an_answer_another_queued_job_still_uses(world):
    first = world.run().json["job_id"]
    world.finish(first)
    answer = world.store.get_job(first)["answer_id"]
    second = world.run(f'{{"command": "cat *", "input_files": ["{answer}"]}}').json["job_id"]
    assert world.http.simulate_delete(f"/jobs/{first}").status_code == 204
    assert world.store.get_data(answer) is not None and world.store.get_job(second)


# --- the core: DELETE /jobs/{id} --------------------------------------------------------

def test_delete_jobs_id_is_204_and_the_job_is_then_unknown(world):
    job_id = world.run().json["job_id"]
    world.finish(job_id)
    resp = world.http.simulate_delete(f"/jobs/{job_id}")
    assert resp.status_code == 204 and not resp.content
    assert world.http.simulate_get(f"/jobs/{job_id}").status_code == 404
    assert world.http.simulate_delete(f"/jobs/{job_id}").status_code == 404
    audit = world.http.simulate_get("/audit", params={"action": "job.delete"}).json
    assert [entry["target"] for entry in audit] == [job_id]


def test_a_state_change_for_a_job_deleted_meanwhile_is_dropped_not_an_error(world):
    from modaclouds_batch.store import JobChange

    kept, gone = world.run().json["job_id"], world.run().json["job_id"]
    world.store.delete_job(gone)
    world.store.apply_job_changes([JobChange(gone, {}, "running", "started"), JobChange(kept, {}, "running", "started")])
    assert world.store.get_job(kept)["state"] == "running" and world.store.get_job(gone) is None


# --- seed 002 ---------------------------------------------------------------------------

def start(world, body='{"command": "sleep 1"}'):
    resp = world.http.simulate_post("/async/jobs", body=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 202, resp.text
    return resp


def test_post_is_202_with_the_status_link_and_location(world):
    resp = start(world)
    job_id = resp.json["id"]
    assert resp.json == {"id": job_id, "status": f"/async/jobs/{job_id}/status"}
    assert resp.headers["location"] == f"/async/jobs/{job_id}/status"


def test_post_takes_the_bodies_post_jobs_takes(world):
    resp = world.http.simulate_post("/async/jobs", body="job-bundle=echo+hi", headers=URLENCODED)
    assert resp.status_code == 202, resp.text
    assert world.store.get_job(resp.json["id"])["kind"] == "bundle"


def test_an_array_or_a_bad_body_is_400_and_leaves_nothing(world):
    for body in ('{"command": "echo", "count": 3}', '{"comand": "echo"}', "[]"):
        resp = world.http.simulate_post("/async/jobs", body=body, headers={"Content-Type": "application/json"})
        assert resp.status_code == 400, resp.text
    assert world.nothing_left()


def test_status_carries_the_cancel_link_while_active_and_the_result_link_once_complete(world):
    job_id = start(world).json["id"]
    status = world.http.simulate_get(f"/async/jobs/{job_id}/status").json
    assert status["status"] == "started" and status["cancel"] == f"/async/jobs/{job_id}/cancel"
    assert "result" not in status
    world.set_status(job_id, 2)
    assert world.http.simulate_get(f"/async/jobs/{job_id}/status").json["status"] == "running"
    early = world.http.simulate_get(f"/async/jobs/{job_id}/result")
    assert early.status_code == 409 and "once its status is complete" in early.json["error"]
    world.finish(job_id, stdout="done\n")
    status = world.http.simulate_get(f"/async/jobs/{job_id}/status").json
    assert status["status"] == "complete" and status["result"] == f"/async/jobs/{job_id}/result"
    assert "cancel" not in status
    result = world.http.simulate_get(f"/async/jobs/{job_id}/result").json
    assert result["exit_status"] == 0
    assert world.http.simulate_get(result["stdout"]).text == "done\n"
    assert world.http.simulate_get(result["answer"]).text == "done\n"


def test_cancel_is_204_then_cancelled_and_a_second_cancel_is_409(world):
    job_id = start(world).json["id"]
    resp = world.http.simulate_delete(f"/async/jobs/{job_id}/cancel")
    assert resp.status_code == 204 and not resp.content
    world.tracker.run_cycle()
    assert world.http.simulate_get(f"/async/jobs/{job_id}/status").json == {
        "id": job_id, "status": "cancelled", "reason": world.store.get_job(job_id)["state_reason"]}
    again = world.http.simulate_delete(f"/async/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json["error"]
    result = world.http.simulate_get(f"/async/jobs/{job_id}/result")
    assert result.status_code == 409 and "never have a result" in result.json["error"]


def test_a_failed_jobs_result_is_409_pointing_at_its_stderr(world):
    job_id = start(world).json["id"]
    world.finish(job_id, exit_code=2)
    assert world.http.simulate_get(f"/async/jobs/{job_id}/status").json["status"] == "failed"
    resp = world.http.simulate_get(f"/async/jobs/{job_id}/result")
    assert resp.status_code == 409 and f"/jobs/{job_id}/artifacts/stderr" in resp.json["error"]


def test_the_collection_lists_id_and_status_newest_first_and_filters(world):
    first, second = start(world).json["id"], start(world).json["id"]
    world.finish(first)
    jobs = world.http.simulate_get("/async/jobs").json["jobs"]
    assert [(j["id"], j["status"]) for j in jobs] == [(second, "started"), (first, "complete")]
    assert jobs[0]["link"] == f"/async/jobs/{second}/status"
    only = world.http.simulate_get("/async/jobs", params={"status": "complete"}).json["jobs"]
    assert [j["id"] for j in only] == [first]
    bad = world.http.simulate_get("/async/jobs", params={"status": "completed"})
    assert bad.status_code == 400 and "complete" in bad.json["error"]


def test_a_job_from_one_door_is_seen_through_every_other_in_its_words(world):
    job_id = world.run().json["job_id"]
    world.finish(job_id)
    assert world.http.simulate_get(f"/async/jobs/{job_id}/status").json["status"] == "complete"
    assert world.http.simulate_get(f"/jobs/{job_id}").json["job_status"] == "completed"
    assert world.http.simulate_get(f"/api/job/job_info/{job_id}").json["state"] == "DONE"


@pytest.mark.parametrize("dialect", [job_manager.DIALECT, long_running.DIALECT], ids=lambda d: d.seed)
def test_the_docs_page_the_index_points_at_exists_with_every_state_word(dialect):
    page = Path(__file__).resolve().parents[2] / dialect.docs
    text = page.read_text(encoding="utf-8")
    for state, word in dialect.states.items():
        assert f"| `{state.value}` | `{word}` |" in text, f"{dialect.docs}: no table row for {state.value}"
