"""The GA4GH TES 1.1 door on the real pool, driven by the py-tes client from PyPI.

Every answer is also fetched raw and checked against the TES 1.1 schemas in tests/tes/,
with keys the schemas do not define refused.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import tes

from tests.tes.schema import check

from .docs_examples import run_page
from .fixtures import GATEWAY_ENV
from .gateway import Client, GatewayProcess

pytestmark = pytest.mark.integration

BASE = "/ga4gh/tes/v1"
FINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}


@pytest.fixture
def tes_client(gateway, client) -> tes.HTTPClient:
    token = client.http.headers["Authorization"].split(" ", 1)[1]
    return tes.HTTPClient(client.url, token=token, timeout=60)


def raw(client, task_id: str, view: str) -> dict:
    resp = client.get(f"{BASE}/tasks/{task_id}", params={"view": view})
    assert resp.status_code == 200, resp.text
    check(resp.json(), "tesTask", minimal=view == "MINIMAL")
    return resp.json()


def wait_final(client, task_id: str, timeout: float = 180.0) -> tuple[dict, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        task = raw(client, task_id, "MINIMAL")
        if not seen or seen[-1] != task["state"]:
            seen.append(task["state"])
        if task["state"] in FINAL:
            return raw(client, task_id, "FULL"), seen
        assert time.monotonic() < deadline, f"task {task_id} still {task['state']} after {timeout}s"
        time.sleep(0.3)


def test_service_info_through_py_tes(tes_client, client):
    info = tes_client.get_service_info()
    assert info.type["artifact"] == "tes" and info.type["version"] == "1.1.0" and info.name
    resp = client.get(f"{BASE}/service-info")
    check(resp.json(), "tesServiceInfo", strict=False)


def test_a_task_with_an_inline_input_runs_its_executors_in_order(tes_client, client):
    task = tes.Task(
        name="tes-inline",
        inputs=[tes.Input(path="/data/in.txt", content="alpha\nbeta\n", type="FILE")],
        volumes=["/work"],
        executors=[
            tes.Executor(image="alpine", command=["sort", "-r", "/data/in.txt"], stdout="/work/sorted.txt"),
            tes.Executor(image="alpine", command=["sh", "-c", 'head -n 1 "$IN"; echo "to stderr" >&2'],
                         env={"IN": "/work/sorted.txt"}, workdir="/work"),
        ],
        resources=tes.Resources(cpu_cores=1, ram_gb=0.25, disk_gb=0.5),
        tags={"suite": "tes-inline"},
    )
    task_id = tes_client.create_task(task)
    for view in ("MINIMAL", "BASIC", "FULL"):
        assert tes_client.get_task(task_id, view=view).id == task_id
        raw(client, task_id, view)
    done, seen = wait_final(client, task_id)
    assert done["state"] == "COMPLETE", done
    assert set(seen) <= {"QUEUED", "INITIALIZING", "RUNNING", "COMPLETE"}
    log = done["logs"][0]
    assert [e["exit_code"] for e in log["logs"]] == [0, 0]
    assert log["logs"][0]["stdout"] == "beta\nalpha\n"   # the tail of its stdout path
    assert log["logs"][1]["stdout"] == "beta\n" and log["logs"][1]["stderr"] == "to stderr\n"
    assert log["start_time"] and log["end_time"] and log["system_logs"]
    assert done["inputs"][0]["content"] == "alpha\nbeta\n"
    basic = raw(client, task_id, "BASIC")
    assert "content" not in basic["inputs"][0] and "stdout" not in basic["logs"][0]["logs"][0]
    full = tes_client.get_task(task_id, view="FULL")
    assert full.state == "COMPLETE" and full.logs[0].logs[1].exit_code == 0
    job = client.job(task_id)
    assert (job["resources"]["memory_mb"], job["resources"]["disk_mb"]) == (256, 512), job["resources"]


def test_a_failing_executor_is_an_executor_error_and_later_ones_do_not_run(tes_client, client):
    task_id = tes_client.create_task(tes.Task(name="tes-fail", executors=[
        tes.Executor(image="alpine", command=["sh", "-c", "echo bad >&2; exit 3"]),
        tes.Executor(image="alpine", command=["echo", "never"]),
    ]))
    done, _ = wait_final(client, task_id)
    assert done["state"] == "EXECUTOR_ERROR", done
    logs = done["logs"][0]["logs"]
    assert [e["exit_code"] for e in logs] == [3] and logs[0]["stderr"] == "bad\n"
    assert tes_client.get_task(task_id, view="FULL").state == "EXECUTOR_ERROR"


def test_cancel_a_running_task(tes_client, client):
    task_id = tes_client.create_task(tes.Task(name="tes-cancel", executors=[
        tes.Executor(image="alpine", command=["sleep", "300"])]))
    deadline = time.monotonic() + 120
    while raw(client, task_id, "MINIMAL")["state"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert tes_client.cancel_task(task_id) is None
    resp = client.post(f"{BASE}/tasks/{task_id}:cancel")
    assert resp.status_code == 200 and resp.json() == {}
    done, _ = wait_final(client, task_id, timeout=60)
    assert done["state"] == "CANCELED"


def test_list_pages_and_filters(tes_client, client):
    run = uuid.uuid4().hex[:8]
    ids = [tes_client.create_task(tes.Task(name=f"tes-list-{run}-{i}", tags={"run": run, "n": str(i % 2)},
                                           executors=[tes.Executor(image="alpine", command=["true"])]))
           for i in range(5)]
    seen, token = [], None
    while True:
        page = tes_client.list_tasks(view="BASIC", page_size=2, page_token=token)
        seen += [t.id for t in page.tasks]
        token = page.next_page_token
        if not token or set(ids) <= set(seen):
            break
    assert [i for i in seen if i in ids] == ids[::-1]

    def listed(**params) -> list[str]:
        resp = client.get(f"{BASE}/tasks", params=params)
        assert resp.status_code == 200, resp.text
        check(resp.json(), "tesListTasksResponse", minimal=params.get("view", "MINIMAL") == "MINIMAL")
        return [t["id"] for t in resp.json()["tasks"]]

    assert listed(name_prefix=f"tes-list-{run}") == ids[::-1]
    assert listed(name_prefix=f"tes-list-{run}", page_size=5, view="FULL") == ids[::-1]
    assert listed(tag_key="run", tag_value=run) == ids[::-1]
    assert listed(tag_key=["run", "n"], tag_value=[run, "1"]) == [ids[3], ids[1]]
    assert listed(tag_key=["run", "n"], tag_value=[run, ""]) == ids[::-1]
    for task_id in ids:
        wait_final(client, task_id)
    assert listed(name_prefix=f"tes-list-{run}", state="COMPLETE") == ids[::-1]
    assert listed(name_prefix=f"tes-list-{run}", state="RUNNING") == []


def test_the_docs_page_runs_as_printed(client, tmp_path):
    out = run_page("docs/dialect-tes.md", client, tmp_path)
    assert '{"state":"COMPLETE","logs":[{"exit_code":0,"stdout":"a\\nb\\n"}]}' in out
    assert '"state": "CANCELED"' in out and "backend_parameters_strict" in out


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory, condor_config):
    """A gateway that allows file:// URLs in one folder."""
    shared = tmp_path_factory.mktemp("tes-shared")
    process = GatewayProcess(tmp_path_factory.mktemp("tes-gateway"), condor_config,
                             env={**GATEWAY_ENV, "MODACLOUDS_BATCH_TES_FILE_FOLDERS": str(shared)}).start()
    yield process, shared
    process.stop()


def test_file_inputs_and_outputs_through_an_allowed_folder(shared_gateway):
    process, shared = shared_gateway
    client = process.client()
    token = client.http.headers["Authorization"].split(" ", 1)[1]
    tes_client = tes.HTTPClient(client.url, token=token, timeout=60)
    (shared / "in").mkdir()
    (shared / "in" / "words.txt").write_text("pear\napple\n")
    (shared / "in" / "ref").mkdir()
    (shared / "in" / "ref" / "extra.txt").write_text("fig\n")
    task_id = tes_client.create_task(tes.Task(
        name="tes-files",
        inputs=[tes.Input(path="/data/words.txt", url=f"file://{shared}/in/words.txt"),
                tes.Input(path="/data/ref", url=f"file://{shared}/in/ref", type="DIRECTORY")],
        outputs=[tes.Output(path="/out/sorted.txt", url=f"file://{shared}/out/sorted.txt"),
                 tes.Output(path="/out/*.count", path_prefix="/out/", url=f"file://{shared}/out/counts")],
        volumes=["/out"],
        executors=[tes.Executor(image="alpine", command=["sh", "-c",
                   "cat /data/words.txt /data/ref/extra.txt | sort > /out/sorted.txt; "
                   "wc -l < /out/sorted.txt > /out/lines.count; echo 1 > /out/one.count"])]))
    done, _ = wait_final(client, task_id)
    assert done["state"] == "COMPLETE", done
    assert (shared / "out" / "sorted.txt").read_text() == "apple\nfig\npear\n"
    assert sorted(p.name for p in (shared / "out" / "counts").iterdir()) == ["lines.count", "one.count"]
    assert (shared / "out" / "counts" / "lines.count").read_text().strip() == "3"
    assert {o["path"] for o in done["logs"][0]["outputs"]} == {"/out/sorted.txt", "/out/lines.count", "/out/one.count"}
    info = client.get(f"{BASE}/service-info").json()
    assert info["storage"] == [shared.resolve().as_uri()]
    outside = client.post(f"{BASE}/tasks", json={"executors": [{"image": "a", "command": ["true"]}],
                                                 "inputs": [{"path": "/x", "url": "file:///etc/passwd"}]})
    assert outside.status_code == 400 and outside.json()["field"] == "inputs[0].url"


@pytest.fixture
def http_files(tmp_path):
    """A local HTTP server (the execute nodes reach it as HTCondor's curl plugin fetches inputs)."""
    import functools
    import http.server
    import threading

    (tmp_path / "genome.fa").write_text(">chr1\nACGTACGT\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_http_input_is_fetched_on_the_execute_node(tes_client, client, http_files):
    task_id = tes_client.create_task(tes.Task(
        name="tes-http",
        inputs=[tes.Input(path="/data/genome.fa", url=f"{http_files}/genome.fa")],
        executors=[tes.Executor(image="alpine", command=["grep", "-c", "ACGT", "/data/genome.fa"])]))
    done, _ = wait_final(client, task_id)
    assert done["state"] == "COMPLETE", done
    assert done["logs"][0]["logs"][0]["stdout"] == "1\n"


def test_an_http_input_that_cannot_be_fetched_is_a_system_error(tes_client, client, http_files):
    task_id = tes_client.create_task(tes.Task(
        name="tes-http-missing",
        inputs=[tes.Input(path="/data/none.fa", url=f"{http_files}/none.fa")],
        executors=[tes.Executor(image="alpine", command=["true"])]))
    done, _ = wait_final(client, task_id)
    assert done["state"] == "SYSTEM_ERROR", done
    assert any("could not fetch an input" in line for line in done["logs"][0]["system_logs"]), done
    tes_client.cancel_task(task_id)


CWL_TOOL = """cwlVersion: v1.0
class: CommandLineTool
baseCommand: [sort]
inputs:
  words:
    type: File
    inputBinding: {position: 1}
outputs:
  sorted:
    type: stdout
stdout: sorted.txt
"""


def cwl_tes_executable() -> str | None:
    """cwl-tes pins an old cwltool, so it lives in a venv of its own: $CWL_TES, else on PATH."""
    import os
    import shutil

    return os.environ.get("CWL_TES") or shutil.which("cwl-tes")


@pytest.mark.skipif(cwl_tes_executable() is None, reason="cwl-tes is not installed (see docs/dialect-tes.md)")
def test_a_one_step_cwl_workflow_runs_with_cwl_tes(tmp_path_factory, condor_config):
    """cwl-tes sends no opaque token (its --token must be an RS256 JWT), so this gateway runs with tokens off."""
    import subprocess

    work = tmp_path_factory.mktemp("cwl")
    (work / "sort.cwl").write_text(CWL_TOOL)
    (work / "words.txt").write_text("pear\napple\n")
    (work / "job.yml").write_text("words: {class: File, path: words.txt}\n")
    process = GatewayProcess(tmp_path_factory.mktemp("cwl-gateway"), condor_config,
                             env={**GATEWAY_ENV, "MODACLOUDS_BATCH_AUTH": "false",
                                  "MODACLOUDS_BATCH_TES_FILE_FOLDERS": str(work)}).start()
    try:
        done = subprocess.run([cwl_tes_executable(), "--tes", process.url, "--outdir", str(work / "out"),
                               "sort.cwl", "job.yml"], cwd=work, capture_output=True, text=True, timeout=300)
        tasks = Client(process.url).get(f"{BASE}/tasks", params={"view": "FULL"}).json()["tasks"]
    finally:
        process.stop()
    assert done.returncode == 0, done.stderr[-4000:]
    assert (work / "out" / "sorted.txt").read_text() == "apple\npear\n"
    # It ran as one TES task on the pool: a file:// input in, the stdout file out.
    assert [t["state"] for t in tasks] == ["COMPLETE"], tasks
    assert tasks[0]["inputs"][0]["url"].startswith("file://") and tasks[0]["logs"][0]["outputs"], tasks
    print("cwl-tes task:", json.dumps({k: tasks[0][k] for k in ("executors", "inputs", "outputs")}))


def test_an_http_output_is_put_to_its_url(tes_client, client):
    from tests.tes.put_server import put_server

    with put_server() as (base, received):
        task_id = tes_client.create_task(tes.Task(
            name="tes-put",
            outputs=[tes.Output(path="/out/result.txt", url=f"{base}/results/result.txt")],
            volumes=["/out"],
            executors=[tes.Executor(image="alpine", command=["sh", "-c", "echo 42 > /out/result.txt"])]))
        done, _ = wait_final(client, task_id)
    assert done["state"] == "COMPLETE", done
    assert received == {"/results/result.txt": b"42\n"}
    assert done["logs"][0]["outputs"] == [{"url": f"{base}/results/result.txt", "path": "/out/result.txt",
                                           "size_bytes": "3"}]


def test_outputs_are_delivered_when_the_job_ends_without_a_read(shared_gateway):
    """No GET of the task from its creation to the check: the file appears on disk because
    the job ended, and only then is the task read (COMPLETE); the state filter agrees."""
    process, shared = shared_gateway
    client = process.client()
    run = uuid.uuid4().hex[:8]
    done_file = shared / f"delivered-{run}.txt"
    good = client.post(f"{BASE}/tasks", json={
        "name": f"tes-deliver-{run}-good", "volumes": ["/out"],
        "outputs": [{"path": "/out/r.txt", "url": done_file.as_uri()}],
        "executors": [{"image": "alpine", "command": ["sh", "-c", "echo delivered > /out/r.txt"]}]}).json()["id"]
    bad = client.post(f"{BASE}/tasks", json={
        "name": f"tes-deliver-{run}-bad",
        "outputs": [{"path": "/out/never.txt", "url": (shared / f"never-{run}.txt").as_uri()}],
        "executors": [{"image": "alpine", "command": ["true"]}]}).json()["id"]
    deadline = time.monotonic() + 180
    while not done_file.exists():
        assert time.monotonic() < deadline, "the output was never delivered"
        time.sleep(0.3)
    assert done_file.read_text() == "delivered\n"
    assert raw(client, good, "MINIMAL")["state"] == "COMPLETE"
    done, _ = wait_final(client, bad)
    assert done["state"] == "SYSTEM_ERROR", done  # its job completed; its output was never made
    assert any("outputs not delivered" in line for line in done["logs"][0]["system_logs"]), done
    assert client.job(bad)["job_status"] == "completed"

    def listed(state: str) -> set[str]:
        resp = client.get(f"{BASE}/tasks", params={"name_prefix": f"tes-deliver-{run}", "state": state})
        assert resp.status_code == 200, resp.text
        return {t["id"] for t in resp.json()["tasks"]}

    assert listed("COMPLETE") == {good} and listed("SYSTEM_ERROR") == {bad} and listed("RUNNING") == set()


@pytest.fixture
def held_http_file(tmp_path):
    """An HTTP server whose one file is sent only once the test lets it go: until then the
    execute node is still fetching the task's input."""
    import http.server
    import threading

    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            release.wait(300)
            body = b"slow input\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slow.txt", release
    release.set()
    server.shutdown()
    server.server_close()


def test_a_task_whose_input_is_still_being_fetched_is_initializing(tes_client, client, held_http_file):
    url, release = held_http_file
    run = uuid.uuid4().hex[:8]
    task_id = tes_client.create_task(tes.Task(
        name=f"tes-init-{run}", inputs=[tes.Input(path="/data/slow.txt", url=url)],
        executors=[tes.Executor(image="alpine", command=["cat", "/data/slow.txt"])]))
    deadline = time.monotonic() + 180
    while (state := raw(client, task_id, "MINIMAL")["state"]) != "INITIALIZING":
        assert state == "QUEUED" and time.monotonic() < deadline, f"task {task_id} is {state}, never INITIALIZING"
        time.sleep(0.3)
    # The input cannot arrive before we release it: the state holds, and the filter agrees.
    full = raw(client, task_id, "FULL")
    assert full["state"] == "INITIALIZING"
    assert any("fetching the task's input" in line for line in full["logs"][0]["system_logs"]), full
    by_state = {word: [t["id"] for t in client.get(f"{BASE}/tasks", params={
        "name_prefix": f"tes-init-{run}", "state": word}).json()["tasks"]] for word in ("INITIALIZING", "RUNNING")}
    assert by_state == {"INITIALIZING": [task_id], "RUNNING": []}
    release.set()
    done, seen = wait_final(client, task_id)
    assert done["state"] == "COMPLETE", done
    assert done["logs"][0]["logs"][0]["stdout"] == "slow input\n"
    assert "INITIALIZING" not in seen[seen.index("COMPLETE"):]


@pytest.fixture
def ready_signal():
    """A URL the executor fetches to say it is ready, and the event that fetch sets."""
    import http.server
    import threading

    ready = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ready.set()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ready", ready
    server.shutdown()
    server.server_close()


def test_a_canceled_task_is_canceling_until_htcondor_has_stopped_it(tes_client, client, ready_signal):
    """The executor ignores SIGTERM, so HTCondor keeps the removed job in its queue until it
    kills it (the machine's vacate time, 10 s by default): the task reads CANCELING meanwhile."""
    url, ready = ready_signal
    task_id = tes_client.create_task(tes.Task(name="tes-canceling", executors=[
        tes.Executor(image="alpine", command=[
            "sh", "-c", f"trap '' TERM; python3 -c \"import urllib.request as u; u.urlopen('{url}')\"; sleep 300"])]))
    assert ready.wait(180), "the executor never started"  # its trap is set: a TERM cannot end it now
    assert tes_client.cancel_task(task_id) is None
    done, seen = wait_final(client, task_id, timeout=180)
    assert done["state"] == "CANCELED"
    assert seen[0] == "CANCELING", seen
    assert client.post(f"{BASE}/tasks/{task_id}:cancel").json() == {}


SNAKEFILE = """rule sort:
    input: "words.txt"
    output: "sorted.txt"
    shell: "sort {input} > {output}"
"""


@pytest.mark.skipif(not __import__("os").environ.get("SNAKEMAKE_TES"),
                    reason="set SNAKEMAKE_TES to a snakemake executable with snakemake-executor-plugin-tes and "
                           "snakemake-storage-plugin-fs; it runs Snakemake inside each task, so the workers need "
                           "Snakemake, that plugin and rsync on their own system, which the test pool's lack "
                           "(docs/dialect-tes.md says why)")
def test_a_one_rule_snakefile_runs_with_snakemakes_tes_executor(tmp_path_factory, condor_config):
    """The plugin assumes no shared file system, so the rule's files live in an fs storage
    prefix (a tes_file_folders folder); the token is the gateway's own, sent as Bearer."""
    import os
    import subprocess

    work = tmp_path_factory.mktemp("snake")
    (work / "Snakefile").write_text(SNAKEFILE)
    (work / "storage").mkdir()
    (work / "storage" / "words.txt").write_text("pear\napple\n")
    process = GatewayProcess(tmp_path_factory.mktemp("snake-gateway"), condor_config,
                             env={**GATEWAY_ENV, "MODACLOUDS_BATCH_TES_FILE_FOLDERS": str(work)}).start()
    try:
        client = process.client()
        token = client.http.headers["Authorization"].split(" ", 1)[1]
        done = subprocess.run([os.environ["SNAKEMAKE_TES"], "--executor", "tes", "--tes-url", process.url,
                               "--jobs", "1", "--default-storage-provider", "fs", "--default-storage-prefix",
                               str(work / "storage"), "sorted.txt"],
                              cwd=work, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "SNAKEMAKE_TES_TOKEN": token})
        tasks = client.get(f"{BASE}/tasks", params={"view": "FULL"}).json()["tasks"]
    finally:
        process.stop()
    assert done.returncode == 0, done.stderr[-4000:]
    assert (work / "storage" / "sorted.txt").read_text() == "apple\npear\n"
    assert [t["state"] for t in tasks] == ["COMPLETE"], tasks


def test_a_delivery_the_gateway_was_killed_in_is_made_after_its_restart(tmp_path, condor_config):
    """The first PUT of the output is held open by the receiving server, the gateway is
    SIGKILLed in the middle of it, and the restarted gateway delivers the output again on
    its own: no GET of the task until the file has arrived."""
    import http.server
    import threading

    arrived, release = threading.Event(), threading.Event()
    received: dict[str, bytes] = {}
    puts = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            puts.append(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if len(puts) == 1:  # the delivery the gateway dies in
                arrived.set()
                release.wait(300)
            else:
                received[self.path] = body
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/out/r.txt"
    process = GatewayProcess(tmp_path / "tes-restart", condor_config, env=GATEWAY_ENV).start()
    try:
        client = process.client()
        resp = client.post(f"{BASE}/tasks", json={
            "name": "tes-restart", "volumes": ["/out"], "outputs": [{"path": "/out/r.txt", "url": url}],
            "executors": [{"image": "alpine", "command": ["sh", "-c", "echo survived > /out/r.txt"]}]})
        assert resp.status_code == 200, resp.text
        task_id = resp.json()["id"]
        assert arrived.wait(180), "the gateway never delivered the output"
        process.kill()
        process.start()
        deadline = time.monotonic() + 120
        while "/out/r.txt" not in received:
            assert time.monotonic() < deadline, f"the restarted gateway did not deliver again; PUTs: {puts}"
            time.sleep(0.3)
        assert received == {"/out/r.txt": b"survived\n"}
        done, _ = wait_final(client, task_id, timeout=60)
        assert done["state"] == "COMPLETE", done
        assert [o["url"] for o in done["logs"][0]["outputs"]] == [url]
    finally:
        release.set()
        process.stop()
        server.shutdown()
        server.server_close()
