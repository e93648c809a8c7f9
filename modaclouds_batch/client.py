"""A small typed client for the gateway's HTTP API; the `modaclouds-batch submit|jobs|...`
commands are built on it.

    from modaclouds_batch.client import BatchClient

    client = BatchClient()      # MODACLOUDS_BATCH_URL / MODACLOUDS_BATCH_TOKEN / the local admin token
    job = client.submit(Path("bundles/hello"), args=["-foo", "two words"])
    job = client.wait(job["id"])
    print(client.artifact(job["id"], "stdout").decode())

Every failure is a :class:`BatchError` carrying the gateway's ``{"error": ...}`` message.
Uploads are streamed from disk (a folder is packed into a temporary ``.tar.gz`` first), so
a large input never has to fit in memory, and ``progress`` sees every chunk sent.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import requests

from . import __version__
from .jobs.bundles import RUN_SH, ArchiveLimits, ArchiveRejected, pack_directory, validate_archive
from .jobs.states import FINAL_STATES, JobAction
from .settings import is_loopback_address, local_token_path

URL_ENV = "MODACLOUDS_BATCH_URL"
TOKEN_ENV = "MODACLOUDS_BATCH_TOKEN"
DEFAULT_URL = "http://127.0.0.1:5000"
ARTIFACTS = ("output", "stdout", "stderr")
# State names a job ends in; `wait` returns once it reaches one.
FINAL = frozenset(state.value for state in FINAL_STATES)
ACTIONS = tuple(action.value for action in JobAction)
# The gateway reads, validates and spools an upload before it answers: allow it longer
# than an ordinary request.
UPLOAD_READ_TIMEOUT = 600.0
# Answers during `wait` that mean "try again shortly" rather than "give up".
TRANSIENT_STATUSES = (None, 502, 503, 504)
CHUNK = 1 << 20

Job = dict[str, Any]
Archive = Path | str | bytes
Progress = Callable[[int, int], None]


class BatchError(Exception):
    """A request failed.

    ``status`` is the HTTP status, or None when no answer came (unreachable gateway, a
    folder that cannot be packed); ``message`` is the gateway's ``error`` text (or what
    went wrong locally); ``body`` is the decoded answer (a dict for JSON errors, the text
    otherwise, None without an answer); ``retry_after`` is the Retry-After seconds of a
    429 or 503, when given.
    """

    def __init__(self, status: int | None, message: str, body: Any = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}" if self.status is not None else self.message


class WaitTimeout(BatchError):
    """`wait` gave up before the job ended; ``body`` is the job as last seen."""


def error_from_response(resp: requests.Response) -> BatchError:
    """The BatchError for a non-2xx answer, with the gateway's message when it sent one."""
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    else:
        text = (body if isinstance(body, str) else "").strip()
        message = text[:500] if text else (resp.reason or "request failed")
    retry_after = None
    raw = resp.headers.get("Retry-After", "")
    if raw.strip().isdigit():
        retry_after = float(raw)
    return BatchError(resp.status_code, message, body, retry_after)


def job_arguments(args: str | Sequence[str] | None) -> str | None:
    """The ``job-arguments`` field: a string goes as written (the gateway splits it like a
    POSIX shell); a list of words is quoted so that each word arrives as it is."""
    if args is None:
        return None
    if isinstance(args, str):
        return args
    words = list(args)
    if not all(isinstance(word, str) for word in words):
        raise TypeError("args must be a string or a sequence of strings")
    return shlex.join(words)


def pack_folder(folder: Path, dest: Path, *, bundle: bool) -> Path:
    """Pack a folder's contents into ``dest`` (.tar.gz), named relative to the folder.

    A bundle must hold ``run.sh`` at its root (checked before anything is sent). Either
    kind is checked the way the gateway checks uploads (links leaving the folder, fifos,
    devices), so a folder it would refuse fails here, before a long upload; size limits
    are the gateway's to enforce. Raises BatchError (status None) naming the problem.
    """
    folder, dest = Path(folder), Path(dest)
    if bundle and not (folder / RUN_SH).is_file():
        raise BatchError(None, f"{folder} has no {RUN_SH} at its root; a bundle's entry point is ./{RUN_SH}")
    try:
        if bundle:
            pack_directory(folder, dest)
            return dest
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
        with tarfile.open(dest, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
            for child in sorted(os.listdir(folder)):
                tar.add(folder / child, arcname=child, recursive=True, filter=_without_owner)
        validate_archive(dest, field="job-input", limits=_NO_SIZE_LIMITS, require_run_sh=False)
        return dest
    except ArchiveRejected as exc:
        dest.unlink(missing_ok=True)
        raise BatchError(None, exc.reason) from None
    except (OSError, ValueError) as exc:
        dest.unlink(missing_ok=True)
        raise BatchError(None, f"cannot pack {folder}: {exc}") from None


_NO_SIZE_LIMITS = ArchiveLimits(max_unpacked_bytes=1 << 62, max_members=1 << 40)


def _without_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode &= 0o777
    return info


def _archive_name(value: Archive, default: str) -> str:
    if isinstance(value, bytes):
        return default
    path = Path(value)
    name = path.resolve().name if path.is_dir() else path.name
    return name if name.endswith((".tar.gz", ".tgz")) else f"{name}.tar.gz"


def local_token(url: str, home: Path | None = None) -> str | None:
    """The admin token a gateway on this machine wrote in its home; None for a URL elsewhere.

    Only sent to a loopback URL, so the local admin token never travels to another host.
    """
    host = urlsplit(url).hostname or ""
    if host != "localhost" and not is_loopback_address(host):
        return None
    try:
        return local_token_path(home).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


class BatchClient:
    """The gateway's API as methods; one HTTP session, reused.

    ``url`` and ``token`` default to ``MODACLOUDS_BATCH_URL`` (else http://127.0.0.1:5000)
    and ``MODACLOUDS_BATCH_TOKEN``, else, for a gateway on this machine (a loopback URL), the
    local admin token it wrote to ``<home>/admin-token`` (``home``: else ``MODACLOUDS_BATCH_HOME``,
    else the default home). ``timeout`` bounds connecting and each wait for data, in seconds.
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0,
                 session: requests.Session | None = None, home: Path | None = None):
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or local_token(self.url, home))
        self.timeout = timeout
        self.http = session or requests.Session()
        self.http.headers["User-Agent"] = f"modaclouds-batch-client/{__version__}"
        if self.token:
            self.http.headers["Authorization"] = f"Bearer {self.token}"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "BatchClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------

    def request(self, method: str, path: str, *, timeout: Any = None, **kw) -> requests.Response:
        """One request; a BatchError for anything but 2xx or when no answer comes."""
        try:
            resp = self.http.request(method, self.url + path, timeout=timeout or self.timeout, **kw)
        except requests.ConnectionError as exc:
            raise BatchError(None, f"cannot reach the gateway at {self.url}: {_root_cause(exc)}; is it "
                             f"running there? Point at another one with --url or {URL_ENV}") from None
        except requests.Timeout:
            raise BatchError(None, f"the gateway at {self.url} did not answer {method} {path} in time") from None
        if not resp.ok:
            error = error_from_response(resp)
            resp.close()
            raise error
        return resp

    def _json(self, method: str, path: str, **kw) -> Any:
        return self.request(method, path, **kw).json()

    # --- jobs -------------------------------------------------------------------------

    def submit(
        self,
        bundle: Archive,
        input: Archive | None = None,
        args: str | Sequence[str] | None = None,
        name: str | None = None,
        notify: str | None = None,
        progress: Progress | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> Job:
        """Submit a job; returns the job's detailed view (``id``, ``backend_id``, ...).

        ``bundle`` and ``input`` are a folder (packed here; a bundle folder must hold
        ``run.sh``), a ``.tar.gz`` file, or the archive's bytes. ``args`` is a string split
        by the gateway like a shell would, or a list of words passed as they are.
        ``progress(sent, total)`` is called as the upload goes. ``fields`` adds other form
        fields of POST /jobs (``job-notification-events``, ``job-runtime``, ...).
        """
        from requests_toolbelt.multipart.encoder import MultipartEncoder, MultipartEncoderMonitor

        form: list[tuple[str, Any]] = []
        for key, value in (("job-name", name), ("job-arguments", job_arguments(args)),
                           ("job-notification", notify), *(fields or {}).items()):
            if value is not None:
                form.append((key, str(value)))
        with contextlib.ExitStack() as stack:
            workdir: list[Path] = []

            def scratch() -> Path:
                if not workdir:
                    workdir.append(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="modaclouds-batch-"))))
                return workdir[0]

            for field, value, is_bundle in (("job-bundle", bundle, True), ("job-input", input, False)):
                if value is None:
                    continue
                filename = _archive_name(value, "bundle.tar.gz" if is_bundle else "input.tar.gz")
                form.append((field, (filename, self._open_archive(value, is_bundle, scratch, stack),
                                     "application/gzip")))
            monitor = MultipartEncoderMonitor(
                MultipartEncoder(form),
                (lambda m: progress(m.bytes_read, m.len)) if progress else None,
            )
            if progress:
                progress(0, monitor.len)
            try:
                resp = self.request("POST", "/jobs", data=monitor, headers={"Content-Type": monitor.content_type},
                                    timeout=(self.timeout, max(self.timeout, UPLOAD_READ_TIMEOUT)))
            except BatchError as exc:
                if exc.status is None and monitor.bytes_read < monitor.len:
                    exc.message += (f" (the connection broke after {monitor.bytes_read} of {monitor.len} bytes: "
                                    "the gateway may have refused the upload as too large)")
                raise
            return resp.json()

    @staticmethod
    def _open_archive(value: Archive, is_bundle: bool, scratch: Callable[[], Path],
                      stack: contextlib.ExitStack) -> BinaryIO:
        if isinstance(value, (bytes, bytearray)):
            return io.BytesIO(value)
        path = Path(value)
        if path.is_dir():
            path = pack_folder(path, scratch() / ("bundle.tar.gz" if is_bundle else "input.tar.gz"),
                               bundle=is_bundle)
        elif not path.is_file():
            what = "bundle" if is_bundle else "input"
            raise BatchError(None, f"{what} {value} is neither a folder nor a .tar.gz file")
        return stack.enter_context(open(path, "rb"))

    def iter_jobs(self, *, limit: int | None = None, page_size: int = 100, **filters: Any) -> Iterator[Job]:
        """Jobs, newest first, following the gateway's cursors page by page.

        Filters are GET /jobs parameters: ``status`` (a state or a list of them),
        ``name`` (a glob), ``created_after``, ``created_before``, ``owner`` (admins),
        ``array_id``. ``limit`` stops after that many jobs.
        """
        params = {key: (",".join(value) if isinstance(value, (list, tuple, set, frozenset)) else value)
                  for key, value in filters.items() if value is not None}
        if limit is not None and limit <= 0:
            return
        params["limit"] = min(page_size, limit) if limit else page_size
        seen = 0
        while True:
            resp = self.request("GET", "/jobs", params=params)
            for job in resp.json():
                yield job
                seen += 1
                if limit is not None and seen >= limit:
                    return
            cursor = resp.headers.get("X-Next-Cursor")
            if not cursor:
                return
            params["cursor"] = cursor

    def jobs(self, *, limit: int | None = None, **filters: Any) -> list[Job]:
        """Every job matching the filters (see ``iter_jobs``), as one list."""
        return list(self.iter_jobs(limit=limit, **filters))

    def job(self, job_id: str) -> Job:
        return self._json("GET", f"/jobs/{job_id}")

    def resolve(self, ref: str) -> str:
        """A job id from what a user types: the full id, a unique prefix of it (4+
        characters), or the backend id (the HTCondor cluster id) of one of their jobs."""
        ref = ref.strip().lower()
        if _FULL_ID.match(ref):
            return ref
        if ref.isdigit():
            matches = [job["id"] for job in self.iter_jobs(page_size=500) if str(job.get("backend_id")) == ref]
            what = f"backend id {ref}"
        elif _ID_PREFIX.match(ref):
            matches = [job["id"] for job in self.iter_jobs(page_size=500) if job["id"].startswith(ref)]
            what = f"an id starting with {ref}"
        else:
            raise BatchError(400, f"'{ref}' is not a job id: give the id, 4 or more of its first characters, "
                                  "or the backend id")
        if not matches:
            raise BatchError(404, f"none of your jobs has {what}")
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
            raise BatchError(400, f"{len(matches)} of your jobs have {what} ({shown}): give more of the id")
        return matches[0]

    def wait(self, job_id: str, on_change: Callable[[Job], None] | None = None, timeout: float | None = None,
             interval: float = 1.0, patience: float = 60.0) -> Job:
        """Poll the job until it ends (completed, failed, removed, submission_error).

        ``on_change(job)`` is called with the first view and whenever the state or its
        reason changes, also for states the job passed through between two looks (from its
        history, with the reason recorded then). A gateway that is briefly away (restarting,
        502-504) is retried for up to ``patience`` seconds. Raises WaitTimeout after
        ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Job | None = None
        shown = None
        # History entries already looked at (the last one is the job's current state).
        passed = 0
        failing_since = None
        while True:
            try:
                job = self.job(job_id)
                failing_since = None
            except BatchError as exc:
                if exc.status not in TRANSIENT_STATUSES:
                    raise
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > patience:
                    raise
                job = None
            if job is not None:
                last = job
                history = job.get("history") or []
                for event in history[passed:-1]:
                    key = (event.get("state"), event.get("reason"))
                    if key != shown and on_change:
                        on_change({**job, "job_status": event.get("state"), "state_reason": event.get("reason")})
                    shown = key
                passed = max(passed, len(history) - 1)
                key = (job.get("job_status"), job.get("state_reason"))
                if key != shown:
                    shown = key
                    if on_change:
                        on_change(job)
                if job.get("job_status") in FINAL:
                    return job
            if deadline is not None and time.monotonic() >= deadline:
                state = last.get("job_status") if last else "unknown"
                raise WaitTimeout(None, f"job {job_id} is still {state} after {timeout:g} s", last)
            time.sleep(interval)

    def act(self, job_id: str, action: str) -> dict[str, Any]:
        """hold, release, remove, suspend or continue; returns {"job_id", "action", "job_status", "job"}."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; actions are {', '.join(ACTIONS)}")
        return self._json("POST", f"/jobs/{job_id}/{action}")

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/jobs/{job_id}/events")

    def notifications(self, job_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/jobs/{job_id}/notifications")

    # --- artifacts --------------------------------------------------------------------

    def artifact(self, job_id: str, name: str) -> bytes:
        """``output`` (.tar.gz bytes), ``stdout`` or ``stderr``, whole, in memory."""
        return self.request("GET", self._artifact_path(job_id, name)).content

    def iter_artifact(self, job_id: str, name: str) -> Iterator[bytes]:
        """An artifact as a stream of chunks, for artifacts too big to hold in memory.

        The request is made at the first ``next()``; a download that breaks off raises
        BatchError.
        """
        path = self._artifact_path(job_id, name)

        def chunks() -> Iterator[bytes]:
            with self.request("GET", path, stream=True) as resp:
                try:
                    yield from resp.iter_content(CHUNK)
                except requests.RequestException as exc:
                    raise BatchError(None, f"downloading {name} of job {job_id} broke off: "
                                           f"{_root_cause(exc)}") from None

        return chunks()

    def follow_artifact(self, job_id: str, name: str = "stdout", interval: float = 1.0) -> Iterator[bytes]:
        """What a job prints to ``stdout`` (or ``stderr``) as it prints it, like ``tail -f``.

        Yields new bytes as they appear and returns once the job has ended and everything it
        printed was read. Each look asks only for the bytes past those already read (Range).
        """
        path = self._artifact_path(job_id, name)
        offset = 0
        while True:
            # The state first: when it was already final, the read below gets the last bytes.
            ended = self.job(job_id).get("job_status") in FINAL
            try:
                with self.request("GET", path, headers={"Range": f"bytes={offset}-"}, stream=True) as resp:
                    for chunk in resp.iter_content(CHUNK):
                        offset += len(chunk)
                        yield chunk
            except BatchError as exc:
                # 404: nothing printed yet (or nothing kept, once ended); 416: nothing new.
                if exc.status not in (404, 416):
                    raise
            if ended:
                return
            time.sleep(interval)

    def save_artifact(self, job_id: str, name: str, dest: Path | str) -> Path:
        """Stream an artifact into ``dest``: written through a ``.part`` file, so it is whole or absent."""
        dest = Path(dest)
        partial = dest.with_name(dest.name + ".part")
        try:
            with open(partial, "wb") as out:
                for chunk in self.iter_artifact(job_id, name):
                    out.write(chunk)
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
        return dest

    def download_output(self, job_id: str, directory: Path | str) -> list[Path]:
        """Unpack the job's output archive into ``directory`` (created if needed).

        Returns the files written. Members are extracted with tarfile's ``data`` filter:
        nothing lands outside the folder, and no links out, devices or setuid bits.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="modaclouds-batch-") as tmp:
            archive = self.save_artifact(job_id, "output", Path(tmp) / "output.tar.gz")
            written = []
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    for member in tar:
                        tar.extract(member, directory, filter="data")
                        if member.isfile():
                            written.append(directory / member.name)
            except (tarfile.TarError, OSError) as exc:
                raise BatchError(None, f"cannot unpack the output of job {job_id} into {directory}: {exc}") from None
        return sorted(written)

    @staticmethod
    def _artifact_path(job_id: str, name: str) -> str:
        if name not in ARTIFACTS:
            raise ValueError(f"unknown artifact {name!r}; artifacts are {', '.join(ARTIFACTS)}")
        return f"/jobs/{job_id}/artifacts/{name}"

    # --- the caller -------------------------------------------------------------------

    def quota(self) -> dict[str, Any]:
        """What the caller may still submit now (GET /quota)."""
        return self._json("GET", "/quota")

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health")


_FULL_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ID_PREFIX = re.compile(r"^[0-9a-f][0-9a-f-]{3,35}$")


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error chain, which says the most."""
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None or inner is exc:
            break
        exc = inner
    if exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc) or type(exc).__name__
