"""A real gateway process for integration tests, and a small client that talks to it."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pack(folder: Path | str, extra: dict[str, bytes] | None = None) -> bytes:
    """A .tar.gz of a folder's contents (run.sh at the root), plus extra files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if folder:
            for path in sorted(Path(folder).rglob("*")):
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def pack_bundle(name: str) -> bytes:
    return pack(BUNDLES / name)


class GatewayProcess:
    """`modaclouds-batch serve` on a free port with its own home; start, kill, restart."""

    def __init__(self, home: Path, condor_config: Path, env: dict[str, str] | None = None):
        self.home = home
        self.condor_config = condor_config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = home / "gateway.log"

    def start(self, timeout: float = 30.0) -> "GatewayProcess":
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modaclouds_batch", "--home", str(self.home), "serve",
             "--port", str(self.port), "--condor-config", str(self.condor_config)],
            env={**self.env, "MODACLOUDS_BATCH_TRACKER_INTERVAL": self.env.get("MODACLOUDS_BATCH_TRACKER_INTERVAL", "1")},
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early; see {self.log_path}:\n{self.log_path.read_text()[-3000:]}")
            try:
                requests.get(self.url + "/health", timeout=2)
                return self
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError(f"gateway did not answer within {timeout}s; see {self.log_path}")

    @property
    def admin_token(self) -> str:
        """The local admin token the gateway wrote in its home at first start."""
        return (self.home / "admin-token").read_text(encoding="utf-8").strip()

    def client(self) -> "Client":
        """A client sending the local admin token, as the CLI does on the gateway's machine."""
        return Client(self.url, self.admin_token)

    def kill(self) -> None:
        """SIGKILL: the hardest stop, nothing gets to clean up."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class Client:
    """What a user's script does with curl, as Python; with ``token``, as -H "Authorization: Bearer ..."."""

    def __init__(self, url: str, token: str | None = None):
        self.url = url
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, **kw) -> requests.Response:
        return self.http.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.http.post(self.url + path, timeout=120, **kw)

    def submit(self, bundle: bytes, *, name="test", arguments=None, input_archive=None, notify=None, **fields):
        files = {"job-bundle": ("job.tar.gz", bundle, "application/gzip")}
        if input_archive is not None:
            files["job-input"] = ("input.tar.gz", input_archive, "application/gzip")
        data = {"job-name": name, **fields}
        if arguments is not None:
            data["job-arguments"] = arguments
        if notify:
            data["job-notification"] = notify
        return self.post("/jobs", files=files, data=data)

    def job(self, job_id: str) -> dict:
        resp = self.get(f"/jobs/{job_id}")
        resp.raise_for_status()
        return resp.json()

    def wait_for(self, job_id: str, states, timeout: float = 120.0) -> dict:
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while job["job_status"] not in states:
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['job_status']} after {timeout}s (wanted {states}): {job}")
            time.sleep(0.5)
            job = self.job(job_id)
        return job

    def wait_until(self, job_id: str, predicate, timeout: float = 60.0, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: {what} not met after {timeout}s: {job}")
            time.sleep(0.5)
