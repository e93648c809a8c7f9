"""The Python client and the CLI commands built on it, against a local stub gateway.

The stub is a real HTTP server on loopback answering canned responses, so requests,
multipart streaming and error parsing run for real; the real gateway and pool are the
integration tests' business (tests/integration/test_cli.py).
"""

from __future__ import annotations

import io
import json
import os
import shlex
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner
from requests_toolbelt.multipart.decoder import MultipartDecoder

from modaclouds_batch.cli import main
from modaclouds_batch.client import BatchClient, BatchError, WaitTimeout, job_arguments, pack_folder

REPO = Path(__file__).resolve().parents[2]
JOB_ID = "e0e7e44a-6cda-4e41-96e1-30d10540637f"


class StubGateway:
    """Answers each (method, path) from a queue of (status, headers, body); records requests.

    The last answer queued for a route is repeated once the queue runs out.
    """

    def __init__(self):
        self.routes: dict[tuple[str, str], list] = {}
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stub.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                      "headers": dict(self.headers), "body": body})
                queue = stub.routes.get((self.command, url.path))
                if not queue:
                    status, headers, payload = 404, {}, {"error": f"no route {url.path}"}
                else:
                    status, headers, payload = queue.pop(0) if len(queue) > 1 else queue[0]
                if isinstance(payload, (dict, list)):
                    data = json.dumps(payload).encode()
                    headers = {"Content-Type": "application/json", **headers}
                else:
                    data = payload if isinstance(payload, bytes) else str(payload).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def on(self, method: str, path: str, *answers) -> None:
        self.routes[(method, path)] = [a if isinstance(a, tuple) else (200, {}, a) for a in answers]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    gateway = StubGateway()
    yield gateway
    gateway.close()


@pytest.fixture
def client(stub, monkeypatch):
    monkeypatch.delenv("MODACLOUDS_BATCH_TOKEN", raising=False)
    return BatchClient(stub.url, timeout=5)


def job(status: str, **extra) -> dict:
    return {"id": JOB_ID, "job_id": JOB_ID, "backend_id": 7, "name": "hello", "job_status": status,
            "state_reason": extra.pop("state_reason", None), "outputs_ready": status in ("completed", "failed"),
            "links": {"actions": {}}, **extra}


def targz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def names_in(archive: bytes | Path) -> set[str]:
    data = archive.read_bytes() if isinstance(archive, Path) else archive
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name for m in tar.getmembers()}


# --- pure parts ----------------------------------------------------------------------


@pytest.mark.parametrize("words", [["-foo", "two words"], ["it's", 'say "hi"', "$HOME", "a;b", ""], []])
def test_argument_lists_arrive_word_for_word_after_the_gateways_shell_split(words):
    assert shlex.split(job_arguments(words)) == words


def test_an_argument_string_is_sent_as_written():
    assert job_arguments("-n 3 'two words'") == "-n 3 'two words'"
    assert job_arguments(None) is None


def test_a_bundle_folder_is_packed_relative_to_its_root(tmp_path):
    dest = pack_folder(REPO / "bundles" / "python-wordcount", tmp_path / "b.tar.gz", bundle=True)
    assert names_in(dest) == {"run.sh", "wordcount.py"}


def test_a_bundle_folder_without_run_sh_is_refused_before_anything_is_sent(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.sh").write_text("echo hi\n")
    with pytest.raises(BatchError) as caught:
        pack_folder(tmp_path / "src", tmp_path / "b.tar.gz", bundle=True)
    assert caught.value.status is None and "run.sh" in caught.value.message
    assert not (tmp_path / "b.tar.gz").exists()


def test_an_input_folder_needs_no_run_sh_but_may_not_link_outside(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("alpha\n")
    dest = pack_folder(src, tmp_path / "in.tar.gz", bundle=False)
    assert names_in(dest) == {"sub", "sub/a.txt"}

    (src / "escape").symlink_to("/etc/passwd")
    with pytest.raises(BatchError) as caught:
        pack_folder(src, tmp_path / "in2.tar.gz", bundle=False)
    assert "escape" in caught.value.message
    assert not (tmp_path / "in2.tar.gz").exists()


# --- errors --------------------------------------------------------------------------


def test_a_gateway_error_carries_its_status_message_and_body(stub, client):
    stub.on("GET", f"/jobs/{JOB_ID}", (404, {}, {"error": "no job with that id", "field": "job_id"}))
    with pytest.raises(BatchError) as caught:
        client.job(JOB_ID)
    error = caught.value
    assert (error.status, error.message) == (404, "no job with that id")
    assert error.body == {"error": "no job with that id", "field": "job_id"}
    assert str(error) == "HTTP 404: no job with that id"


def test_a_non_json_error_keeps_the_text_and_retry_after(stub, client):
    stub.on("GET", "/quota", (503, {"Retry-After": "30", "Content-Type": "text/plain"}, "proxy: upstream down"))
    with pytest.raises(BatchError) as caught:
        client.quota()
    assert caught.value.status == 503 and caught.value.message == "proxy: upstream down"
    assert caught.value.retry_after == 30


def test_an_unreachable_gateway_is_a_batch_error_without_status():
    with pytest.raises(BatchError) as caught:
        BatchClient("http://127.0.0.1:1", timeout=2).job(JOB_ID)
    assert caught.value.status is None and "cannot reach the gateway at http://127.0.0.1:1" in str(caught.value)


def test_url_and_token_come_from_the_environment(stub, monkeypatch):
    monkeypatch.setenv("MODACLOUDS_BATCH_URL", stub.url + "/")
    monkeypatch.setenv("MODACLOUDS_BATCH_TOKEN", "s3cret")
    stub.on("GET", "/quota", {"user": "alice"})
    client = BatchClient()
    assert client.url == stub.url and client.quota() == {"user": "alice"}
    assert stub.requests[-1]["headers"]["Authorization"] == "Bearer s3cret"


# --- requests ------------------------------------------------------------------------


def test_submit_streams_a_multipart_form_and_reports_progress(stub, client, tmp_path):
    stub.on("POST", "/jobs", (201, {"Location": f"/jobs/{JOB_ID}"}, job("idle")))
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "words.txt").write_text("alpha beta\n")
    seen = []
    created = client.submit(REPO / "bundles" / "hello", input=tmp_path / "input", args=["-foo", "two words"],
                            name="test1", notify="http://hooks.example/done",
                            fields={"job-notification-events": "all"}, progress=lambda s, t: seen.append((s, t)))
    assert created["id"] == JOB_ID

    sent = stub.requests[-1]
    parts = {}
    for part in MultipartDecoder(sent["body"], sent["headers"]["Content-Type"]).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        name = disposition.split('name="')[1].split('"')[0]
        filename = disposition.split('filename="')[1].split('"')[0] if "filename=" in disposition else None
        parts[name] = (filename, part.content)
    assert parts["job-name"] == (None, b"test1")
    assert parts["job-arguments"] == (None, b"-foo 'two words'")
    assert parts["job-notification"] == (None, b"http://hooks.example/done")
    assert parts["job-notification-events"] == (None, b"all")
    assert parts["job-bundle"][0] == "hello.tar.gz" and names_in(parts["job-bundle"][1]) == {"run.sh"}
    assert parts["job-input"][0] == "input.tar.gz" and names_in(parts["job-input"][1]) == {"words.txt"}
    total = int(sent["headers"]["Content-Length"])
    assert seen[0] == (0, total) and seen[-1] == (total, total)


def test_submit_takes_archive_bytes_and_tar_gz_files(stub, client, tmp_path):
    stub.on("POST", "/jobs", (201, {}, job("idle")))
    archive = targz({"run.sh": b"echo hi\n"})
    (tmp_path / "job.tgz").write_bytes(archive)
    client.submit(archive)
    client.submit(tmp_path / "job.tgz")
    files = [MultipartDecoder(r["body"], r["headers"]["Content-Type"]).parts[0] for r in stub.requests]
    assert [p.content for p in files] == [archive, archive]
    dispositions = [p.headers[b"Content-Disposition"] for p in files]
    assert b'filename="bundle.tar.gz"' in dispositions[0] and b'filename="job.tgz"' in dispositions[1]


def test_jobs_follows_cursors_with_the_same_filters(stub, client):
    stub.on("GET", "/jobs", (200, {"X-Next-Cursor": "c1"}, [{"id": "a"}, {"id": "b"}]), (200, {}, [{"id": "c"}]))
    assert [j["id"] for j in client.jobs(status=["idle", "running"], name="run-*")] == ["a", "b", "c"]
    first, second = stub.requests
    assert first["query"] == {"status": ["idle,running"], "name": ["run-*"], "limit": ["100"]}
    assert second["query"] == {**first["query"], "cursor": ["c1"]}


def test_jobs_limit_stops_early(stub, client):
    stub.on("GET", "/jobs", (200, {"X-Next-Cursor": "c1"}, [{"id": "a"}, {"id": "b"}]))
    assert [j["id"] for j in client.jobs(limit=2)] == ["a", "b"]
    assert len(stub.requests) == 1 and stub.requests[0]["query"]["limit"] == ["2"]


def test_wait_reports_each_change_rides_out_a_restart_and_returns_the_final_view(stub, client):
    stub.on("GET", f"/jobs/{JOB_ID}", job("idle"), job("idle"), (503, {}, {"error": "restarting"}),
            job("running"), job("completed", state_reason="run.sh exited with status 0"))
    changes = []
    final = client.wait(JOB_ID, on_change=lambda j: changes.append(j["job_status"]), interval=0.01)
    assert final["job_status"] == "completed"
    assert changes == ["idle", "running", "completed"]


def test_wait_gives_up_after_its_timeout(stub, client):
    stub.on("GET", f"/jobs/{JOB_ID}", job("running"))
    with pytest.raises(WaitTimeout) as caught:
        client.wait(JOB_ID, timeout=0.2, interval=0.05)
    assert "still running" in caught.value.message and caught.value.body["job_status"] == "running"


def test_act_posts_the_action_and_refuses_unknown_ones(stub, client):
    stub.on("POST", f"/jobs/{JOB_ID}/hold", (202, {}, {"job_id": JOB_ID, "action": "hold", "job_status": "held"}))
    assert client.act(JOB_ID, "hold")["job_status"] == "held"
    with pytest.raises(ValueError):
        client.act(JOB_ID, "explode")


def test_download_output_unpacks_into_a_folder(stub, client, tmp_path):
    stub.on("GET", f"/jobs/{JOB_ID}/artifacts/output",
            (200, {"Content-Type": "application/gzip"}, targz({"./hello.txt": b"hi\n", "sub/x.txt": b"x"})))
    files = client.download_output(JOB_ID, tmp_path / "out")
    assert files == [tmp_path / "out" / "hello.txt", tmp_path / "out" / "sub" / "x.txt"]
    assert (tmp_path / "out" / "hello.txt").read_text() == "hi\n"


def test_download_output_refuses_members_that_leave_the_folder(stub, client, tmp_path):
    stub.on("GET", f"/jobs/{JOB_ID}/artifacts/output", (200, {}, targz({"../evil.txt": b"boo"})))
    with pytest.raises(BatchError) as caught:
        client.download_output(JOB_ID, tmp_path / "out")
    assert "cannot unpack" in caught.value.message
    assert not (tmp_path / "evil.txt").exists()


# --- the CLI -------------------------------------------------------------------------


def run_cli(stub, *args):
    env = {"MODACLOUDS_BATCH_TOKEN": ""}
    return CliRunner().invoke(main, ["--url", stub.url, *args], env=env, catch_exceptions=False)


def test_cli_submit_prints_the_job_id_or_json(stub):
    stub.on("POST", "/jobs", (201, {}, job("idle")))
    result = run_cli(stub, "submit", str(REPO / "bundles" / "hello"))
    assert result.exit_code == 0 and result.stdout == f"{JOB_ID}\n"
    assert "uploading hello: 100%" in result.stderr and f"submitted job {JOB_ID}" in result.stderr
    result = run_cli(stub, "submit", str(REPO / "bundles" / "hello"), "--json")
    assert json.loads(result.stdout)["job_status"] == "idle"


def test_cli_submit_after_sends_the_dependency_fields(stub):
    stub.on("POST", "/jobs", (201, {}, job("idle")))
    other = "0b7e2c1a-0000-4000-8000-000000000001"
    result = run_cli(stub, "submit", str(REPO / "bundles" / "hello"), "--after", JOB_ID, "--after", other,
                     "--after-any", other)
    assert result.exit_code == 0, result.output
    request = stub.requests[-1]
    parts = {part.headers[b"Content-Disposition"].decode().split('name="')[1].split('"')[0]: part.content
             for part in MultipartDecoder(request["body"], request["headers"]["Content-Type"]).parts}
    assert parts["job-after"] == f"{JOB_ID},{other}".encode() and parts["job-after-any"] == other.encode()


@pytest.mark.parametrize("status, code", [("completed", 0), ("failed", 3), ("removed", 4)])
def test_cli_submit_wait_prints_stdout_and_exits_by_the_jobs_end(stub, status, code):
    stub.on("POST", "/jobs", (201, {}, job("idle")))
    stub.on("GET", f"/jobs/{JOB_ID}", job("running"), job(status, state_reason=f"it is {status}"))
    stub.on("GET", f"/jobs/{JOB_ID}/artifacts/stdout", (200, {"Content-Type": "text/plain"}, "hello, world\n"))
    stub.on("GET", f"/jobs/{JOB_ID}/artifacts/stderr", (200, {"Content-Type": "text/plain"}, "oops\n"))
    result = run_cli(stub, "submit", str(REPO / "bundles" / "hello"), "--wait")
    assert result.exit_code == code, result.output
    assert f"{status}: it is {status}" in result.stderr
    if status == "removed":
        assert result.stdout == ""
    else:
        assert result.stdout == "hello, world\n"
    assert ("oops" in result.stderr) == (status == "failed")


def test_cli_reports_the_gateways_message_and_exits_1(stub):
    stub.on("POST", f"/jobs/{JOB_ID}/release", (409, {}, {"error": "release applies only to held jobs"}))
    result = run_cli(stub, "release", JOB_ID)
    assert result.exit_code == 1
    assert result.stderr == "error: HTTP 409: release applies only to held jobs\n"


def test_cli_hints_at_the_token_variable_on_401(stub):
    stub.on("GET", "/jobs", (401, {}, {"error": "this gateway needs an API token"}))
    result = run_cli(stub, "jobs")
    assert result.exit_code == 1 and "MODACLOUDS_BATCH_TOKEN" in result.stderr


def test_cli_usage_errors_exit_2(stub, tmp_path):
    assert run_cli(stub, "status").exit_code == 2
    assert run_cli(stub, "submit", str(tmp_path / "missing")).exit_code == 2


def test_cli_jobs_table_and_json(stub):
    rows = [{"id": JOB_ID, "job_status": "running", "name": "hello", "created_at": "2026-11-22T22:40:01Z",
             "backend_id": 7}]
    stub.on("GET", "/jobs", (200, {}, rows))
    table = run_cli(stub, "jobs", "--status", "running,idle")
    assert table.exit_code == 0 and table.stdout.splitlines()[1].split() == [JOB_ID, "running", "7",
                                                                            "2026-11-22T22:40:01Z", "hello"]
    assert stub.requests[-1]["query"]["status"] == ["running,idle"]
    assert json.loads(run_cli(stub, "jobs", "--json").stdout) == rows


def test_cli_download_writes_files_and_lists_them(stub, tmp_path):
    stub.on("GET", f"/jobs/{JOB_ID}/artifacts/output", (200, {}, targz({"hello.txt": b"hi\n"})))
    result = run_cli(stub, "download", JOB_ID, "--dir", str(tmp_path / "d"), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["files"] == [str(tmp_path / "d" / "hello.txt")]
    assert os.path.exists(tmp_path / "d" / "hello.txt")


OTHER_ID = "e0e7e44a-0000-4000-8000-000000000000"


def test_resolve_takes_the_full_id_a_unique_prefix_or_the_backend_id(stub, client):
    stub.on("GET", "/jobs", [job("completed"), {**job("idle"), "id": OTHER_ID, "backend_id": 8}])
    assert client.resolve(JOB_ID.upper()) == JOB_ID
    assert client.resolve("e0e7e44a-6c") == JOB_ID
    assert client.resolve("8") == OTHER_ID
    with pytest.raises(BatchError, match="2 of your jobs have an id starting with e0e7"):
        client.resolve("e0e7")
    with pytest.raises(BatchError, match="none of your jobs has backend id 99"):
        client.resolve("99")
    with pytest.raises(BatchError, match="not a job id"):
        client.resolve("e0e")


def test_a_refused_connection_points_at_url_and_the_environment(monkeypatch):
    port = free_loopback_port()
    with pytest.raises(BatchError) as caught:
        BatchClient(f"http://127.0.0.1:{port}", timeout=2).health()
    assert "--url or MODACLOUDS_BATCH_URL" in str(caught.value)


def test_wait_follows_several_jobs_and_exits_with_the_worst(stub, monkeypatch):
    stub.on("GET", "/jobs", [job("completed"), {**job("failed"), "id": OTHER_ID, "backend_id": 8}])
    stub.on("GET", f"/jobs/{JOB_ID}", job("completed"))
    stub.on("GET", f"/jobs/{OTHER_ID}", {**job("failed"), "id": OTHER_ID})
    result = run_cli(stub, "wait", JOB_ID, "8")
    assert result.exit_code == 3, result.output
    assert f"{JOB_ID} completed" in result.stdout and f"{OTHER_ID} failed" in result.stdout


def free_loopback_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_logs_follow_prints_what_comes_asking_only_for_new_bytes(stub, monkeypatch):
    monkeypatch.setattr("modaclouds_batch.client.time.sleep", lambda s: None)
    stdout = f"/jobs/{JOB_ID}/artifacts/stdout"
    stub.on("GET", f"/jobs/{JOB_ID}", job("idle"), job("running"), job("running"), job("completed"))
    stub.on("GET", stdout,
            (404, {"Retry-After": "1"}, {"error": "the job is idle; its stdout is available once it starts"}),
            (206, {"Content-Type": "text/plain"}, b"tick 1\n"),
            (416, {}, {"error": "nothing new"}),
            (206, {"Content-Type": "text/plain"}, b"tick 2\ndone\n"))
    result = run_cli(stub, "logs", "-f", JOB_ID)
    assert result.exit_code == 0, result.output
    assert result.stdout == "tick 1\ntick 2\ndone\n"
    ranges = [r["headers"].get("Range") for r in stub.requests if r["path"] == stdout]
    assert ranges == ["bytes=0-", "bytes=0-", "bytes=7-", "bytes=7-"]


def test_wait_reports_the_states_a_job_passed_through_between_two_looks(stub, client):
    """A job that ran and ended between two polls is shown running too, from its history."""
    history = [{"state": "idle", "reason": None, "at": "t0"}]
    ran = history + [{"state": "running", "reason": None, "at": "t1"},
                     {"state": "completed", "reason": "run.sh exited with status 0", "at": "t2"}]
    stub.on("GET", f"/jobs/{JOB_ID}", job("idle", history=history),
            job("completed", state_reason="run.sh exited with status 0", history=ran))
    changes = []
    client.wait(JOB_ID, on_change=lambda j: changes.append((j["job_status"], j.get("state_reason"))), interval=0.01)
    assert changes == [("idle", None), ("running", None), ("completed", "run.sh exited with status 0")]
