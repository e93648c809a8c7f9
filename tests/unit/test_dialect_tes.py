"""The GA4GH TES 1.1 dialect over the fake schedd, and its run.sh run by a real /bin/sh.

Every answer is checked against the TES 1.1 schemas in tests/tes/ with unknown keys refused.
"""

import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from modaclouds_batch.dialects import tes, tes_task
from modaclouds_batch.errors import InvalidRequest
from modaclouds_batch.jobs import bundles
from modaclouds_batch import store
from modaclouds_batch.jobs.states import JobState
from tests.tes.schema import check

from .test_dialect_001_002 import World

TASKS = "/ga4gh/tes/v1/tasks"
TES_STATES = {"UNKNOWN", "QUEUED", "INITIALIZING", "RUNNING", "PAUSED", "COMPLETE", "EXECUTOR_ERROR",
              "SYSTEM_ERROR", "CANCELED", "PREEMPTED", "CANCELING"}


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.close()


def task(name="t", **extra):
    return {"name": name, "executors": [{"image": "alpine", "command": ["echo", "hello"]}], **extra}


def wait_for(condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def create(world, body):
    resp = world.http.simulate_post(TASKS, json=body)
    assert resp.status_code == 200, resp.text
    check(resp.json, "tesCreateTaskResponse")
    return resp.json["id"]


def get(world, task_id, view):
    resp = world.http.simulate_get(f"{TASKS}/{task_id}", params={"view": view})
    assert resp.status_code == 200, resp.text
    check(resp.json, "tesTask", minimal=view == "MINIMAL")
    return resp.json


def test_the_state_table_maps_every_core_state_to_a_tes_state():
    assert set(tes.STATES) == set(JobState)
    assert set(tes.STATES.values()) | set(tes.UNUSED_STATES) <= TES_STATES
    assert tes.DIALECT.states is tes.STATES
    assert {word for _, _, word in tes.STATE_TABLE} == TES_STATES - {"UNKNOWN", "PREEMPTED"}
    assert set(tes.CONDITIONS) == set(store.TES_CONDITIONS)
    for state in JobState:  # each state's rows end with an unconditional one
        assert [c for s, c, _ in tes.STATE_TABLE if s is state][-1] is None


def test_service_info_is_a_ga4gh_service_info_for_tes_1_1(world):
    resp = world.http.simulate_get("/ga4gh/tes/v1/service-info")
    assert resp.status_code == 200
    check(resp.json, "tesServiceInfo", strict=False)
    assert resp.json["type"] == {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"}
    assert resp.json["tesResources_backend_parameters"] == ["runtime", "time_limit"]
    assert "no container runtime" in resp.json["description"] and "not pulled" in resp.json["description"]


def test_the_index_lists_the_tes_door(world):
    entry = [api for api in world.http.simulate_get("/").json["apis"] if api["seed"] == "tes"]
    assert entry == [{"name": "GA4GH Task Execution Service 1.1", "seed": "tes", "base": "/ga4gh/tes/v1",
                      "docs": "docs/dialect-tes.md"}]


def test_a_task_is_one_job_and_every_view_shows_only_tes_fields(world):
    body = task("views", description="d", tags={"WORKFLOW_ID": "w1"}, volumes=["/vol/A"],
                inputs=[{"path": "/data/in.txt", "content": "secret\n", "name": "in"}])
    task_id = create(world, body)
    assert world.store.get_job(task_id)["name"] == "views"
    assert len(world.condor.queue) == 1

    assert get(world, task_id, "MINIMAL") == {"id": task_id, "state": "QUEUED"}
    basic = get(world, task_id, "BASIC")
    assert basic["inputs"] == [{"path": "/data/in.txt", "name": "in"}]  # no content in BASIC
    assert basic["tags"] == {"WORKFLOW_ID": "w1"} and basic["volumes"] == ["/vol/A"]
    assert "system_logs" not in basic["logs"][0]
    full = get(world, task_id, "FULL")
    assert full["inputs"][0]["content"] == "secret\n"
    assert len(full["logs"]) == 1 and full["logs"][0]["logs"] == [] and full["logs"][0]["system_logs"]
    assert world.http.simulate_get(f"{TASKS}/{task_id}").json == {"id": task_id, "state": "QUEUED"}
    assert world.http.simulate_get(f"{TASKS}/{task_id}", params={"view": "ALL"}).status_code == 400


def test_states_follow_the_job(world):
    task_id = create(world, task())
    job_id = task_id
    world.set_status(job_id, 2, JobCurrentStartDate=100)  # the worker is fetching the input files
    full = get(world, task_id, "FULL")
    assert full["state"] == "INITIALIZING"
    assert any("fetching the task's input" in line for line in full["logs"][0]["system_logs"])
    world.set_status(job_id, 2, JobCurrentStartExecutingDate=101)
    assert get(world, task_id, "MINIMAL")["state"] == "RUNNING"
    world.set_status(job_id, 5, HoldReason="held by test", HoldReasonCode=1)
    full = get(world, task_id, "FULL")
    assert full["state"] == "PAUSED"
    assert any("holds the job" in line for line in full["logs"][0]["system_logs"])
    world.set_status(job_id, 2)
    world.finish(job_id, exit_code=3)
    assert get(world, task_id, "MINIMAL")["state"] == "EXECUTOR_ERROR"


def test_list_pages_with_an_opaque_token_and_the_last_page_has_none(world):
    ids = [create(world, task(f"p{i}")) for i in range(5)]
    first = world.http.simulate_get(TASKS, params={"page_size": "2"}).json
    check(first, "tesListTasksResponse", minimal=True)
    assert [t["id"] for t in first["tasks"]] == ids[::-1][:2]
    seen = [t["id"] for t in first["tasks"]]
    token = first["next_page_token"]
    while token:
        page = world.http.simulate_get(TASKS, params={"page_size": "2", "page_token": token}).json
        check(page, "tesListTasksResponse", minimal=True)
        seen += [t["id"] for t in page["tasks"]]
        token = page.get("next_page_token")
    assert seen == ids[::-1]
    assert world.http.simulate_get(TASKS, params={"page_size": "2048"}).status_code == 400
    assert world.http.simulate_get(TASKS, params={"page_token": "nonsense"}).status_code == 400


def test_list_filters_by_name_prefix_state_and_tags_as_the_spec_says(world):
    a = create(world, task("align-1", tags={"foo": "bar", "baz": "bat"}))
    b = create(world, task("align-2", tags={"foo": "bat"}))
    c = create(world, task("call-1", tags={"foo": ""}))
    d = create(world, task("call-2"))
    # A job from another door is no task.
    world.http.simulate_post("/jobs", json={"command": "true"})

    def ids(**params):
        resp = world.http.simulate_get(TASKS, params=params)
        assert resp.status_code == 200, resp.text
        check(resp.json, "tesListTasksResponse", minimal=True)
        return {t["id"] for t in resp.json["tasks"]}

    assert ids() == {a, b, c, d}
    assert ids(name_prefix="align") == {a, b}
    assert ids(tag_key="foo", tag_value="bar") == {a}
    assert ids(tag_key=["foo", "baz"], tag_value=["bar", "bat"]) == {a}
    assert ids(tag_key="foo") == {a, b, c}      # {"foo": ""} matches any value, not a missing key
    assert ids(tag_key="foo", tag_value="") == {a, b, c}
    assert ids(tag_key=["foo", "baz"], tag_value=["bat", "bat"]) == set()
    world.set_status(b, 2)
    assert ids(state="RUNNING") == {b}
    assert ids(state="CANCELING") == set()
    assert world.http.simulate_get(TASKS, params={"state": "DONE"}).status_code == 400
    full = world.http.simulate_get(TASKS, params={"view": "FULL", "name_prefix": "call-2"}).json
    check(full, "tesListTasksResponse")
    assert full["tasks"][0]["logs"][0]["system_logs"]


def test_cancel_removes_the_job_and_answers_an_empty_object(world):
    task_id = create(world, task())
    resp = world.http.simulate_post(f"{TASKS}/{task_id}:cancel")
    assert resp.status_code == 200 and resp.json == {}
    check(resp.json, "tesCancelTaskResponse")
    assert ("remove", ) == tuple(name for name, _ in world.condor.calls if name == "remove")
    world.tracker.run_cycle()
    assert get(world, task_id, "MINIMAL")["state"] == "CANCELED"
    assert world.http.simulate_post(f"{TASKS}/{task_id}:cancel").json == {}


def test_cancel_of_a_finished_task_is_a_conflict(world):
    task_id = create(world, task())
    world.set_status(task_id, 2)
    world.finish(task_id)
    resp = world.http.simulate_post(f"{TASKS}/{task_id}:cancel")
    assert resp.status_code == 409 and "COMPLETE" in resp.json["error"]


def test_another_doors_job_and_an_unknown_id_are_not_tasks(world):
    job = world.http.simulate_post("/jobs", json={"command": "true"}).json
    assert world.http.simulate_get(f"{TASKS}/{job['id']}").status_code == 404
    assert world.http.simulate_get(f"{TASKS}/00000000-0000-0000-0000-000000000000").status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"name": "x"}, "executors"),
    ({"executors": [{"command": ["true"]}]}, "executors[0].image"),
    ({"executors": [{"image": "a", "command": "echo hi"}]}, "executors[0].command"),
    ({"executors": [{"image": "a", "command": ["true"], "workdir": "data"}]}, "executors[0].workdir"),
    ({"executors": [{"image": "a", "command": ["true"], "stdout": "/usr/bin/x"}]}, "executors[0].stdout"),
    ({"executors": [{"image": "a", "command": ["true"], "env": {"A-B": "1"}}]}, "executors[0].env"),
    ({"executors": [{"image": "a", "command": ["true"], "shell": True}]}, "executor.shell"),
    ({**task(), "inputs": [{"path": "/data/x", "url": "s3://bucket/x"}]}, "inputs[0].url"),
    ({**task(), "inputs": [{"path": "data/x", "content": "x"}]}, "inputs[0].path"),
    ({**task(), "outputs": [{"path": "/data/x", "url": "file:///tmp/x"}]}, "outputs[0].url"),
    ({**task(), "inputs": [{"path": "/data/x", "url": "file:///etc/passwd"}]}, "inputs[0].url"),
    ({**task(), "colour": "red"}, "task.colour"),
    ({**task(), "resources": {"backend_parameters": {"VmSize": "big"}, "backend_parameters_strict": True}},
     "resources.backend_parameters"),
    ({**task(), "resources": {"cpu_cores": "four"}}, "resources.cpu_cores"),
])
def test_a_bad_task_is_a_400_naming_the_field_and_leaves_nothing(world, body, field):
    resp = world.http.simulate_post(TASKS, json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == field, resp.json
    assert world.nothing_left()


def test_resources_become_the_jobs_requests_and_unsupported_parameters_are_dropped(world):
    task_id = create(world, task(resources={"cpu_cores": 2, "ram_gb": 1.5, "disk_gb": 3, "preemptible": True,
                                            "zones": ["z1"], "backend_parameters": {"VmSize": "big", "RUNTIME": "sh"}}))
    job = world.store.get_job(task_id)
    assert (job["request_cpus"], job["request_memory_mb"], job["request_disk_mb"], job["runtime"]) == (2, 1536, 3072, "sh")
    resources = get(world, task_id, "BASIC")["resources"]
    assert resources == {"cpu_cores": 2, "ram_gb": 1.5, "disk_gb": 3, "preemptible": True, "zones": ["z1"],
                         "backend_parameters": {"RUNTIME": "sh"}}


# --- run.sh, run for real ---------------------------------------------------------------

def run_task(tmp_path: Path, body: dict) -> tuple[int, Path, str]:
    """Unpack the task's bundle as the launcher does and run its run.sh; returns (status, output dir, stderr)."""
    return run_task_parsed(tmp_path, tes_task.parse_task(body))


def run_task_parsed(tmp_path: Path, parsed) -> tuple[int, Path, str]:
    bundle = tmp_path / "bundle.tar.gz"
    bundles.write_files_bundle(parsed.script, parsed.files, bundle)
    work, output = tmp_path / "work", tmp_path / "output"
    work.mkdir()
    output.mkdir()
    with tarfile.open(bundle) as tar:
        tar.extractall(work, filter="data")
    proc = subprocess.run(["/bin/sh", "./run.sh"], cwd=work, capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], "HOME": "/nonexistent", "MODACLOUDS_BATCH_OUTPUT": str(output)})
    return proc.returncode, output, proc.stderr


def logs_of(tmp_path: Path, output: Path, executors: int) -> list[dict]:
    archive = tmp_path / "output.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(output, arcname=".")
    return tes_task.executor_logs(archive, executors, full=True)


def test_executors_run_in_order_with_argv_quoted_paths_under_the_root_and_their_logs(tmp_path):
    body = {"inputs": [{"path": "/data/in.txt", "content": "one\ntwo\n"}], "volumes": ["/vol"],
            "executors": [
                {"image": "x", "command": ["wc", "-l"], "stdin": "/data/in.txt", "stdout": "/vol/count"},
                {"image": "x", "command": ["printf", "%s|", "$HOME", "a b; rm -rf /", "it's", "--in=/vol/count"],
                 "workdir": "/vol", "env": {"WHERE": "/vol/count"}},
                {"image": "x", "command": ["sh", "-c", 'cat "$WHERE"; pwd; echo oops >&2; exit 3'],
                 "workdir": "/vol", "env": {"WHERE": "/vol/count"}, "ignore_error": True},
                {"image": "x", "command": ["sh", "-c", "exit 5"]},
                {"image": "x", "command": ["touch", "/vol/never"]},
            ]}
    status, output, stderr = run_task(tmp_path, body)
    assert status == 5, stderr
    root = (tmp_path / "work" / "root").resolve()
    assert (root / "vol" / "count").read_text().strip() == "2"
    assert not (root / "vol" / "never").exists()  # execution stopped at the error
    logs = logs_of(tmp_path, output, 5)
    assert [log["exit_code"] for log in logs] == [0, 0, 3, 5]
    assert logs[0]["stdout"] == "2\n"  # the tail of its stdout path
    assert logs[1]["stdout"] == f"$HOME|a b; rm -rf /|it's|--in={root}/vol/count|"
    assert logs[2]["stdout"] == f"2\n{root}/vol\n" and logs[2]["stderr"] == "oops\n"
    assert all(log["start_time"].endswith("Z") and log["end_time"] for log in logs)
    check({"id": "x", "state": "EXECUTOR_ERROR", "executors": body["executors"], "logs": [{"logs": logs, "outputs": []}]},
          "tesTask")


def test_an_ignored_error_does_not_fail_the_task_and_a_missing_program_is_127(tmp_path):
    status, output, _ = run_task(tmp_path, {"executors": [
        {"image": "x", "command": ["no-such-program-anywhere"], "ignore_error": True},
        {"image": "x", "command": ["true"]}]})
    assert status == 0
    assert [log["exit_code"] for log in logs_of(tmp_path, output, 2)] == [127, 0]


def test_full_view_reads_executor_logs_from_the_retrieved_output(world, tmp_path):
    task_id = create(world, task())
    job_dir = Path(world.store.get_job(task_id)["job_dir"])
    logs = tmp_path / "out" / ".tes"
    logs.mkdir(parents=True)
    for name, text in (("0.start", "2026-01-01T00:00:00Z"), ("0.end", "2026-01-01T00:00:01Z"), ("0.exit", "0"),
                       ("0.stdout", "hello\n"), ("0.stderr", "")):
        (logs / name).write_text(text + ("\n" if name.endswith(("start", "end", "exit")) else ""))
    with tarfile.open(job_dir / "output.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "out", arcname=".")
    world.set_status(task_id, 2)
    world.finish(task_id)
    full = get(world, task_id, "FULL")
    assert full["state"] == "COMPLETE"
    assert full["logs"][0]["logs"] == [{"exit_code": 0, "start_time": "2026-01-01T00:00:00Z",
                                        "end_time": "2026-01-01T00:00:01Z", "stdout": "hello\n", "stderr": ""}]
    basic = get(world, task_id, "BASIC")
    assert "stdout" not in basic["logs"][0]["logs"][0]
    assert json.dumps(full)  # plain JSON


# --- file:// inputs and outputs ---------------------------------------------------------------

@pytest.fixture
def shared(tmp_path):
    folder = tmp_path / "shared"
    (folder / "in" / "ref").mkdir(parents=True)
    (folder / "in" / "a.txt").write_text("alpha\n")
    (folder / "in" / "ref" / "r1").write_text("r1\n")
    (folder / "out").mkdir()
    return folder


@pytest.fixture
def fworld(tmp_path, shared):
    w = World(tmp_path / "home", tes_file_folders=str(shared))
    yield w
    w.store.close()


def test_file_inputs_from_an_allowed_folder_are_copied_into_the_job(fworld, shared):
    body = task(inputs=[{"path": "/data/a.txt", "url": f"file://{shared}/in/a.txt"},
                        {"path": "/data/ref", "url": f"file://{shared}/in/ref", "type": "DIRECTORY"}])
    task_id = create(fworld, body)
    files = Path(fworld.store.get_job(task_id)["job_dir"]) / "files" / "root" / "data"
    assert (files / "a.txt").read_text() == "alpha\n" and (files / "ref" / "r1").read_text() == "r1\n"
    assert oct((shared / "in" / "a.txt").stat().st_mode & 0o777) != "0o600"  # the source keeps its modes
    info = fworld.http.simulate_get("/ga4gh/tes/v1/service-info").json
    assert info["storage"] == [Path(os.path.realpath(shared)).as_uri()]


@pytest.mark.parametrize("url, why", [
    ("file:///etc/hostname", "outside the folders"),
    ("{shared}/../escape", "outside the folders"),
    ("file://{shared}/in/missing.txt", "not a readable file"),
    ("https://example.org/x?sig=1", "has no query"),
    ("s3://bucket/x", "not supported yet"),
])
def test_file_inputs_outside_the_folders_or_missing_are_refused(fworld, shared, url, why):
    resp = fworld.http.simulate_post(TASKS, json=task(inputs=[{"path": "/data/x", "url": url.format(shared=shared)}]))
    assert resp.status_code == 400 and why in resp.json["error"], resp.json
    assert fworld.nothing_left()


def test_outputs_are_collected_by_run_sh_and_delivered_inside_their_destination(tmp_path, shared):
    folders = (Path(os.path.realpath(shared)),)
    body = {"volumes": ["/out"], "executors": [{"image": "x", "command": [
        "sh", "-c", "echo one > /out/one.txt; echo two > /out/two.txt; mkdir -p /out/d/e; echo deep > /out/d/e/f; "
                    "echo skip > /out/skip.log"]}],
            "outputs": [{"path": "/out/one.txt", "url": f"file://{shared}/out/first.txt"},
                        {"path": "/out/d", "url": f"file://{shared}/out/dir", "type": "DIRECTORY"},
                        {"path": "/out/*.txt", "path_prefix": "/out/", "url": f"file://{shared}/out/glob"}]}
    parsed = tes_task.parse_task(body, folders)
    status, output, stderr = run_task_parsed(tmp_path, parsed)
    assert status == 0, stderr
    archive = tmp_path / "output.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(output, arcname=".")
    delivery = tes_task.deliver_outputs(archive, parsed.outputs, folders)
    assert delivery["error"] is None
    out = shared / "out"
    assert (out / "first.txt").read_text() == "one\n"
    assert (out / "dir" / "e" / "f").read_text() == "deep\n"
    assert sorted(p.name for p in (out / "glob").iterdir()) == ["one.txt", "two.txt"]
    check({"logs": [], "outputs": delivery["files"]}, "tesTaskLog")
    assert {f["path"] for f in delivery["files"]} >= {"/out/one.txt", "/out/d/e/f"}


def test_a_missing_output_is_a_delivery_error(tmp_path, shared):
    folders = (Path(os.path.realpath(shared)),)
    parsed = tes_task.parse_task({"executors": [{"image": "x", "command": ["true"]}],
                                  "outputs": [{"path": "/out/none", "url": f"file://{shared}/out/none"}]}, folders)
    status, output, _ = run_task_parsed(tmp_path, parsed)
    assert status == 0
    archive = tmp_path / "output.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(output, arcname=".")
    assert "was not produced" in tes_task.deliver_outputs(archive, parsed.outputs, folders)["error"]


def test_a_completed_task_delivers_its_outputs_once_and_an_archive_cannot_escape(fworld, shared, tmp_path):
    task_id = create(fworld, task(outputs=[{"path": "/out/*", "path_prefix": "/out", "url": f"file://{shared}/out/t"}]))
    job_dir = Path(fworld.store.get_job(task_id)["job_dir"])
    with tarfile.open(job_dir / "output.tar.gz", "w:gz") as tar:
        for name, data in (("./.tes/outputs/0/out/r.txt", b"result\n"), ("./.tes/outputs/0/out/../../../../evil", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    fworld.set_status(task_id, 2)
    fworld.finish(task_id)
    # Delivered because the job ended, without any read of the task.
    wait_for(lambda: (shared / "out" / "t" / "r.txt").exists(), "the output delivered")
    wait_for(lambda: get(fworld, task_id, "MINIMAL")["state"] != "RUNNING", "the delivery recorded")
    full = get(fworld, task_id, "FULL")
    assert full["state"] == "COMPLETE", full
    assert full["logs"][0]["outputs"] == [{"url": (Path(os.path.realpath(shared)) / "out" / "t" / "r.txt").as_uri(),
                                           "path": "/out/r.txt", "size_bytes": "7"}]
    assert (shared / "out" / "t" / "r.txt").read_text() == "result\n"
    assert not list(tmp_path.rglob("evil"))
    (shared / "out" / "t" / "r.txt").unlink()
    assert get(fworld, task_id, "MINIMAL")["state"] == "COMPLETE"
    assert not (shared / "out" / "t" / "r.txt").exists()  # delivered once, not at every read


def test_an_http_input_travels_in_transfer_input_files_and_run_sh_moves_it_into_the_root(world, tmp_path):
    from modaclouds_batch.condor import submit_description as sd

    body = task(inputs=[{"path": "/data/ref.fa", "url": "https://example.org/genomes/ref.fa"}],
                executors=[{"image": "x", "command": ["cat", "/data/ref.fa"]}])
    parsed = tes_task.parse_task(body)
    assert parsed.url_inputs == ("https://example.org/genomes/ref.fa",)
    spec = sd.JobSpec(job_id="j", instance_id="i", owner="a", name="n", job_dir=tmp_path, url_inputs=parsed.url_inputs)
    assert sd.render_submit(spec)["transfer_input_files"].endswith(",https://example.org/genomes/ref.fa")
    with pytest.raises(ValueError):
        sd.render_submit(sd.JobSpec(job_id="j", instance_id="i", owner="a", name="n", job_dir=tmp_path,
                                    url_inputs=("https://example.org/$(x)",)))
    (tmp_path / "ref.fa").write_text(">chr1\nACGT\n")  # as HTCondor's curl plugin leaves it in the sandbox
    status, output, stderr = run_task_parsed(tmp_path, parsed)
    assert status == 0, stderr
    assert logs_of(tmp_path, output, 1)[0]["stdout"] == ">chr1\nACGT\n"
    assert create(world, body)


@pytest.mark.parametrize("url", ["https://example.org/", "https://example.org/a,b", "http://example.org/work",
                                 "https://example.org/x'y", "https://exa mple.org/x"])
def test_http_inputs_that_cannot_travel_safely_are_refused(world, url):
    resp = world.http.simulate_post(TASKS, json=task(inputs=[{"path": "/data/x", "url": url}]))
    assert resp.status_code == 400 and resp.json["field"] == "inputs[0].url", resp.json


def test_a_job_held_because_an_input_could_not_be_fetched_is_a_system_error(world):
    task_id = create(world, task(inputs=[{"path": "/data/x", "url": "http://127.0.0.1:9/x"}]))
    world.set_status(task_id, 5, HoldReasonCode=13, HoldReason="Transfer input files failure at execution point "
                     "slot1@w1 using protocol http. Details: curl_easy_perform() failed (7): Could not connect")
    full = get(world, task_id, "FULL")
    assert full["state"] == "SYSTEM_ERROR"
    assert any("could not fetch an input" in line for line in full["logs"][0]["system_logs"])
    world.set_status(task_id, 5, HoldReasonCode=1, HoldReason="held by a user")
    assert get(world, task_id, "MINIMAL")["state"] == "PAUSED"


def test_blank_filters_are_refused_and_a_non_uuid_id_is_no_task(world):
    for query in ("state=", "page_size=", "view="):
        resp = world.http.simulate_get(TASKS, query_string=query)
        assert resp.status_code == 400 and resp.json["field"] == query[:-1], resp.text
    assert world.http.simulate_get(f"{TASKS}/0").status_code == 404
    assert world.http.simulate_post(f"{TASKS}/0:cancel").status_code == 404
    assert world.http.simulate_post(f"{TASKS}/a%0Ab:cancel").status_code == 404  # not falcon's 405


def test_tasks_are_isolated_between_users_and_need_a_token(tmp_path):
    world = World(tmp_path, auth=True)
    try:
        headers = {}
        for user in ("alice", "bob"):
            token, _ = world.gateway.tokens.create(user, "user")
            headers[user] = {"Authorization": f"Bearer {token}"}
        root, _ = world.gateway.tokens.create("root", "admin")
        assert world.http.simulate_post(TASKS, json=task()).status_code == 401
        resp = world.http.simulate_post(TASKS, json=task("alices"), headers=headers["alice"])
        task_id = resp.json["id"]
        assert world.store.get_job(task_id)["owner"] == "alice"
        as_bob = headers["bob"]
        assert world.http.simulate_get(f"{TASKS}/{task_id}", headers=as_bob).status_code == 404
        assert world.http.simulate_post(f"{TASKS}/{task_id}:cancel", headers=as_bob).status_code == 404
        assert world.http.simulate_get(TASKS, headers=as_bob).json == {"tasks": []}
        assert [t["id"] for t in world.http.simulate_get(TASKS, headers=headers["alice"]).json["tasks"]] == [task_id]
        admin = world.http.simulate_get(f"{TASKS}/{task_id}", headers={"Authorization": f"Bearer {root}"})
        assert admin.status_code == 200
    finally:
        world.store.close()


def test_http_outputs_are_put_to_their_url(tmp_path):
    from tests.tes.put_server import put_server

    with put_server() as (base, received):
        body = {"volumes": ["/out"], "executors": [{"image": "x", "command": [
                    "sh", "-c", "echo r > /out/r.txt; mkdir -p /out/d; echo a > /out/d/a; echo b > /out/d/b"]}],
                "outputs": [{"path": "/out/r.txt", "url": f"{base}/bucket/r.txt"},
                            {"path": "/out/d", "url": f"{base}/bucket/d/", "type": "DIRECTORY"}]}
        parsed = tes_task.parse_task(body, allow_private=True)
        status, output, stderr = run_task_parsed(tmp_path, parsed)
        assert status == 0, stderr
        archive = tmp_path / "output.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(output, arcname=".")
        delivery = tes_task.deliver_outputs(archive, parsed.outputs, (), allow_private=True)
        assert delivery["error"] is None
        assert received == {"/bucket/r.txt": b"r\n", "/bucket/d/a": b"a\n", "/bucket/d/b": b"b\n"}
        refused = tes_task.parse_task({**body, "outputs": [{"path": "/out/r.txt", "url": f"{base}/refuse/r"}]},
                                      allow_private=True)
        assert "answered 403" in tes_task.deliver_outputs(archive, refused.outputs, (), allow_private=True)["error"]
    with pytest.raises(InvalidRequest) as private:
        tes_task.parse_task({**body, "outputs": [{"path": "/out/r.txt", "url": "http://127.0.0.1:9/x"}]})
    assert private.value.details["field"] == "outputs[0].url"


# --- outputs delivered when the job ends, and after a restart ---------------------------------

def output_archive(job_dir: Path, files: dict[str, bytes]) -> None:
    """The output archive run.sh would leave: each output's files under .tes/outputs/N/."""
    import io

    with tarfile.open(job_dir / "output.tar.gz", "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_delivery_a_stop_interrupted_is_made_by_the_next_gateway_without_a_read(tmp_path, shared):
    home = tmp_path / "home"
    first = World(home, tes_file_folders=str(shared))
    task_id = create(first, task(outputs=[{"path": "/out/r.txt", "url": f"file://{shared}/out/r.txt"}]))
    output_archive(Path(first.store.get_job(task_id)["job_dir"]), {"./.tes/outputs/0/out/r.txt": b"result\n"})
    first.gateway.ends._listeners.clear()  # the gateway stops before its delivery runs
    first.finish(task_id)
    assert first.store.get_job(task_id)["state"] == "completed"
    assert get(first, task_id, "MINIMAL")["state"] == "RUNNING"
    first.store.close()

    second = World(home, tes_file_folders=str(shared))
    try:
        second.tracker.run_cycle()  # its first cycle: the listeners catch up
        wait_for(lambda: (shared / "out" / "r.txt").exists(), "the owed delivery")
        assert (shared / "out" / "r.txt").read_text() == "result\n"
        wait_for(lambda: get(second, task_id, "MINIMAL")["state"] == "COMPLETE", "COMPLETE")
    finally:
        second.store.close()


def test_a_completed_job_whose_outputs_never_came_back_is_a_system_error(fworld, shared):
    task_id = create(fworld, task(outputs=[{"path": "/out/r.txt", "url": f"file://{shared}/out/r.txt"}]))
    fworld.condor.fail.add("retrieve")
    fworld.condor.queue[task_id].update(JobStatus=4, ExitCode=0)
    for _ in range(5):
        fworld.tracker.run_cycle()
    assert fworld.store.get_job(task_id)["state"] == "completed"
    wait_for(lambda: get(fworld, task_id, "MINIMAL")["state"] != "RUNNING", "the delivery recorded")
    full = get(fworld, task_id, "FULL")
    assert full["state"] == "SYSTEM_ERROR"
    assert any("did not give back" in line for line in full["logs"][0]["system_logs"])


# --- one state table: what a task reads is what the state filter lists -----------------------

def test_the_state_filter_lists_exactly_the_tasks_that_read_that_state(fworld, shared):
    world = fworld
    out = [{"path": "/out/r.txt", "url": f"file://{shared}/out/r.txt"}]
    made = {}

    def make(label, **body):
        made[label] = create(world, task(label, **body))
        return made[label]

    make("queued")
    world.set_status(make("initializing"), 2, JobCurrentStartDate=100)
    world.set_status(make("running"), 2, JobCurrentStartDate=100, JobCurrentStartExecutingDate=100)
    world.set_status(make("paused"), 5, HoldReasonCode=1, HoldReason="by a user")
    world.set_status(make("unfetchable"), 5, HoldReasonCode=13,
                     HoldReason="Transfer input files failure at execution point slot1@w1 using protocol http.")
    world.finish(make("complete"))
    world.finish(make("executor_error"), exit_code=2)
    world.set_status(make("canceling"), 3)  # removed, still in the queue
    canceled = make("canceled")
    world.http.simulate_post(f"{TASKS}/{canceled}:cancel")
    delivered = make("delivered", outputs=out)
    output_archive(Path(world.store.get_job(delivered)["job_dir"]), {"./.tes/outputs/0/out/r.txt": b"r\n"})
    world.finish(delivered)
    world.finish(make("undeliverable", outputs=[{"path": "/out/none", "url": f"file://{shared}/out/none"}]))
    wait_for(lambda: not world.store.tes_tasks_awaiting_delivery("completed"), "the deliveries")
    pending = make("delivering", outputs=out)
    world.gateway.ends._listeners.clear()  # this one's delivery has not run yet
    world.finish(pending)
    world.tracker.run_cycle()

    read = {label: get(world, task_id, "MINIMAL")["state"] for label, task_id in made.items()}
    assert read == {"queued": "QUEUED", "initializing": "INITIALIZING", "running": "RUNNING", "paused": "PAUSED",
                    "unfetchable": "SYSTEM_ERROR", "complete": "COMPLETE", "executor_error": "EXECUTOR_ERROR",
                    "canceling": "CANCELING", "canceled": "CANCELED", "delivered": "COMPLETE",
                    "undeliverable": "SYSTEM_ERROR", "delivering": "RUNNING"}
    for word in TES_STATES:
        listed, token = [], None
        while True:  # one task a page: the filter holds across pages too
            params = {"state": word, "page_size": "1", **({"page_token": token} if token else {})}
            page = world.http.simulate_get(TASKS, params=params).json
            listed += [t["id"] for t in page["tasks"]]
            assert all(t["state"] == word for t in page["tasks"])
            token = page.get("next_page_token")
            if not token:
                break
        assert sorted(listed) == sorted(made[label] for label, state in read.items() if state == word), word
    del world.condor.queue[made["canceling"]]  # its worker stopped it: it left the queue
    world.tracker.run_cycle()
    assert get(world, made["canceling"], "MINIMAL")["state"] == "CANCELED"
    resp = world.http.simulate_post(f"{TASKS}/{made['undeliverable']}:cancel")
    assert resp.status_code == 409 and "SYSTEM_ERROR" in resp.json["error"]


def test_read_only_fields_echoed_back_are_ignored_only_when_well_formed(world):
    echoed = create(world, task(name="echoed", id="not-ours", state="COMPLETE", logs=[], creation_time="x"))
    assert echoed != "not-ours"
    for field, value in (("state", "__not_in_enum__"), ("state", 3), ("id", 5), ("logs", {}), ("creation_time", [])):
        resp = world.http.simulate_post(TASKS, json=task(**{field: value}))
        assert resp.status_code == 400 and resp.json["field"] == field, (field, resp.text)
