"""Jobs as the gateway's users see them: submit, read, act, collect artifacts.

Knows jobs, the store and the condor adapter; knows nothing of HTTP.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shlex
import shutil
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from ..condor import submit_description as sd
from ..condor.schedd import CondorClient, CondorRefused, CondorUnavailable
from ..notify import targets
from ..access.audit import AuditLog
from ..access.identity import Actor
from ..errors import BackendRefused, BackendUnavailable, Conflict, Forbidden, InvalidRequest, NotFound, TooLarge
from ..settings import Settings
from ..store import JobChange, JobFilter, Store
from ..timefmt import now_iso
from . import bundles
from .states import FINAL_STATES, JobAction, JobState, action_conflict

log = logging.getLogger(__name__)

ARTIFACT_FILES = {"output": sd.OUTPUT_FILE, "stdout": sd.STDOUT_FILE, "stderr": sd.STDERR_FILE}
MAX_NAME_LENGTH = 200
MAX_ARGUMENTS_LENGTH = 64 * 1024
MAX_SCRIPT_BYTES = 1024 * 1024
COPY_CHUNK = 1024 * 1024
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def check_job_id(job_id: str) -> str:
    """Ids are UUIDs; anything else is a malformed request rather than an unknown job."""
    if not _UUID_RE.match(job_id.lower()):
        raise InvalidRequest(f"'{job_id}' is not a job id; job ids are UUIDs such as the job_id POST /jobs returned")
    return job_id.lower()


@dataclass
class SubmitRequest:
    actor: Actor
    name: str | None = None
    arguments: str | None = None
    notification_url: str | None = None
    notification_events: str = "final"
    request_id: str | None = None


@dataclass
class Staging:
    """A job's folder while its uploads arrive; removed unless the job gets queued."""

    job_id: str
    path: Path
    max_upload_bytes: int
    bundle_filename: str | None = None
    has_bundle: bool = False
    has_input: bool = False
    committed: bool = field(default=False, repr=False)

    @property
    def bundle_path(self) -> Path:
        return self.path / sd.BUNDLE_FILE

    @property
    def input_path(self) -> Path:
        return self.path / sd.INPUT_FILE

    def receive(self, field_name: str, stream: BinaryIO, filename: str | None = None) -> None:
        """Copy an uploaded archive to disk in chunks, refusing it past the size limit."""
        if field_name == "job-bundle":
            target, self.has_bundle, self.bundle_filename = self.bundle_path, True, filename
        elif field_name == "job-input":
            target, self.has_input = self.input_path, True
        else:
            raise InvalidRequest(f"unexpected file field '{field_name}'", field=field_name)
        written = 0
        with open(target, "wb") as out:
            while chunk := stream.read(COPY_CHUNK):
                written += len(chunk)
                if written > self.max_upload_bytes:
                    raise TooLarge(
                        f"{field_name} is larger than the {self.max_upload_bytes}-byte upload limit",
                        field=field_name, limit=self.max_upload_bytes,
                    )
                out.write(chunk)

    def receive_script(self, script: str) -> None:
        """The seed's form: the text of one script, which becomes run.sh."""
        if len(script.encode()) > MAX_SCRIPT_BYTES:
            raise TooLarge(f"job-bundle script is larger than {MAX_SCRIPT_BYTES} bytes", field="job-bundle")
        bundles.write_script_bundle(script, self.bundle_path)
        self.has_bundle = True


class JobService:
    def __init__(self, settings: Settings, store: Store, condor: CondorClient, audit: AuditLog):
        self.settings = settings
        self.store = store
        self.condor = condor
        self.audit = audit
        self.limits = bundles.ArchiveLimits(
            max_unpacked_bytes=settings.max_unpacked_bytes,
            max_members=settings.max_archive_members,
        )
        # Jobs between condor submit and their row in the store: the tracker leaves them be.
        self._in_flight: set[str] = set()
        self._in_flight_lock = threading.Lock()

    # --- submission -------------------------------------------------------------

    @contextmanager
    def staging(self, max_upload_bytes: int | None = None) -> Iterator[Staging]:
        job_id = str(uuid.uuid4())
        path = Path(self.settings.jobs_dir) / job_id
        path.mkdir(parents=True)
        limit = min(max_upload_bytes or self.settings.max_upload_bytes, self.settings.max_upload_bytes)
        staging = Staging(job_id, path, limit)
        with self._in_flight_lock:
            self._in_flight.add(job_id)
        try:
            yield staging
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(job_id)
            if not staging.committed:
                shutil.rmtree(path, ignore_errors=True)

    def in_flight(self) -> set[str]:
        with self._in_flight_lock:
            return set(self._in_flight)

    def submit(self, staging: Staging, request: SubmitRequest) -> dict[str, Any]:
        """Validate the staged uploads, queue the job on the schedd, record it.

        Either the job is queued and recorded, or nothing is left: no row, no folder,
        no cluster in the schedd.
        """
        if not staging.has_bundle:
            raise InvalidRequest("job-bundle is required: a .tar.gz holding run.sh at its root", field="job-bundle")
        name = _check_name(request.name or _default_name(staging.bundle_filename))
        arguments = _parse_arguments(request.arguments)
        notification_url = self._check_notification_url(request.notification_url)
        self._validate_archive(staging.bundle_path, "job-bundle", require_run_sh=True)
        if staging.has_input:
            self._validate_archive(staging.input_path, "job-input", require_run_sh=False)

        spec = sd.JobSpec(
            job_id=staging.job_id,
            instance_id=self.store.instance_id,
            owner=request.actor.user,
            name=name,
            job_dir=staging.path,
            has_input=staging.has_input,
            request_id=request.request_id,
        )
        (staging.path / sd.ARGUMENTS_FILE).write_text(sd.arguments_script(arguments))
        try:
            cluster_id, proc_id = self.condor.submit_spooled(sd.render_submit(spec))
        except CondorUnavailable as exc:
            raise BackendUnavailable(
                f"HTCondor does not answer, so the job was not queued; retry later ({exc})"
            ) from exc
        except CondorRefused as exc:
            raise BackendRefused(f"HTCondor refused the job: {exc}") from exc

        now = now_iso()
        job = {
            "id": staging.job_id,
            "name": name,
            "owner": request.actor.user,
            "state": JobState.IDLE.value,
            "backend_status": "Idle",
            "cluster_id": cluster_id,
            "proc_id": proc_id,
            "arguments": arguments,
            "notification_url": notification_url,
            "notification_events": request.notification_events,
            "has_input": staging.has_input,
            "job_dir": str(staging.path),
            "request_id": request.request_id,
            "created_at": now,
            "updated_at": now,
        }
        try:
            self.store.insert_job({**job, "arguments": json.dumps(arguments)}, reason="submitted")
        except Exception:
            self.condor.remove_quietly(sd.jobs_constraint(spec.instance_id, [spec.job_id]), "gateway could not record the job")
            raise
        staging.committed = True
        log.info("job %s queued as cluster %s (%s)", staging.job_id, cluster_id, name)
        self.audit.record(request.actor, "job.submit", staging.job_id, request_id=request.request_id,
                          detail={"name": name, "cluster_id": cluster_id})
        return self.get(staging.job_id, request.actor)

    def _check_notification_url(self, url: str | None) -> str | None:
        if not url:
            return None
        try:
            return targets.check_url(url, allow_private=self.settings.private_webhooks_allowed)
        except targets.UnsafeTarget as exc:
            raise InvalidRequest(f"job-notification {exc}", field="job-notification") from exc

    def _validate_archive(self, path: Path, field_name: str, require_run_sh: bool) -> None:
        try:
            bundles.validate_archive(path, field=field_name, limits=self.limits, require_run_sh=require_run_sh)
        except bundles.ArchiveRejected as exc:
            error = TooLarge if exc.too_large else InvalidRequest
            raise error(exc.reason, field=field_name) from exc

    # --- reads ------------------------------------------------------------------

    def get(self, job_id: str, actor: Actor) -> dict[str, Any]:
        """The job, if ``actor`` may see it; another user's job is 'not found' so ids do not leak."""
        job = self.store.get_job(check_job_id(job_id))
        if job is None or not actor.may_see(job["owner"]):
            raise NotFound(f"no job with id {job_id}; GET /jobs lists the jobs you can see")
        return job

    def events(self, job_id: str, actor: Actor) -> list[dict[str, Any]]:
        return self.store.job_events(self.get(job_id, actor)["id"])

    def list(self, actor: Actor, flt: JobFilter, limit: int, cursor: str | None):
        if not actor.is_admin:
            if flt.owner not in (None, actor.user):
                raise Forbidden("users list only their own jobs; the owner filter is for admins")
            flt = dataclasses.replace(flt, owner=actor.user)
        try:
            return self.store.list_jobs(flt, limit, cursor)
        except ValueError as exc:
            raise InvalidRequest(f"{exc}; pass the cursor a previous page returned", field="cursor") from exc

    def artifact(self, job_id: str, name: str, actor: Actor, request_id: str | None = None) -> Path:
        job = self.get(job_id, actor)
        if name not in ARTIFACT_FILES:
            raise NotFound(f"no artifact '{name}'; artifacts are {', '.join(ARTIFACT_FILES)}")
        path = Path(job["job_dir"]) / ARTIFACT_FILES[name]
        if job["outputs_retrieved_at"] and path.is_file():
            self.audit.record(actor, "job.download", job["id"], detail={"artifact": name}, request_id=request_id)
            return path
        state = JobState(job["state"])
        if state is JobState.REMOVED or state is JobState.SUBMISSION_ERROR:
            raise NotFound(f"the job is {state.value} and produced no {name}")
        if state.is_final:
            raise NotFound(f"the {name} of this job could not be retrieved: {job['state_reason'] or 'unknown reason'}")
        raise NotFound(f"the job is {state.value}; its {name} is available once it ends")

    def notifications(self, job_id: str, actor: Actor) -> list[dict[str, Any]]:
        return self.store.job_notifications(self.get(job_id, actor)["id"])

    def resend_notification(self, job_id: str, event_id: str, actor: Actor, request_id: str | None = None) -> None:
        job = self.get(job_id, actor)
        actor.require_admin("re-sending a notification")
        if not self.store.requeue_notification(job["id"], event_id, now_iso()):
            raise NotFound(f"job {job_id} has no notification {event_id}; GET /jobs/{job_id}/notifications lists them")
        self.audit.record(actor, "notification.resend", job["id"], detail={"event_id": event_id}, request_id=request_id)

    # --- control ------------------------------------------------------------------

    def act(self, job_id: str, action_name: str, actor: Actor, request_id: str | None = None) -> dict[str, Any]:
        try:
            action = JobAction(action_name)
        except ValueError:
            raise NotFound(
                f"no action '{action_name}'; actions are {', '.join(a.value for a in JobAction)}"
            ) from None
        job = self.get(job_id, actor)
        conflict = action_conflict(action, JobState(job["state"]))
        if conflict:
            raise Conflict(conflict, job_status=job["state"])
        constraint = sd.jobs_constraint(self.store.instance_id, [job["id"]])
        try:
            result = self.condor.act(action.value, constraint, f"{action.value} requested by {actor.user} through the gateway")
        except CondorUnavailable as exc:
            raise BackendUnavailable(f"HTCondor does not answer; retry the {action.value} later ({exc})") from exc
        if result.get("TotalSuccess", 0) < 1:
            raise Conflict(
                f"HTCondor did not {action.value} the job (it may have just changed state); "
                "GET the job and try again", job_status=job["state"], condor_result=result,
            )
        self.audit.record(actor, f"job.{action.value}", job["id"], request_id=request_id)
        self.refresh([job])
        return self.get(job["id"], actor)

    def refresh(self, jobs: list[dict[str, Any]]) -> None:
        """Bring a few jobs' states up to date at once (after an action), without retrieval."""
        from .tracker import changes_from_ads

        constraint = sd.jobs_constraint(self.store.instance_id, [j["id"] for j in jobs])
        try:
            ads = self.condor.query(constraint, sd.JOB_PROJECTION)
        except CondorUnavailable as exc:
            log.warning("could not refresh jobs after an action: %s", exc)
            return
        by_id = {ad.get(sd.GATEWAY_JOB_ID): ad for ad in ads}
        changes = [
            change for job in jobs if (ad := by_id.get(job["id"])) is not None
            for change in [changes_from_ads(job, ad, final_allowed=False)] if change
        ]
        self.store.apply_job_changes(changes)


def _default_name(filename: str | None) -> str:
    if filename:
        stem = Path(filename).name
        for suffix in (".tar.gz", ".tgz"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
        if stem:
            return stem
    return "job"


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH or any(ord(c) < 32 for c in name):
        raise InvalidRequest(
            f"job-name must be 1 to {MAX_NAME_LENGTH} printable characters", field="job-name"
        )
    return name


def _parse_arguments(text: str | None) -> list[str]:
    """Split like a POSIX shell would, without ever running one."""
    if not text:
        return []
    if len(text) > MAX_ARGUMENTS_LENGTH:
        raise TooLarge(f"job-arguments is longer than {MAX_ARGUMENTS_LENGTH} characters", field="job-arguments")
    try:
        args = shlex.split(text, posix=True)
    except ValueError as exc:
        raise InvalidRequest(f"job-arguments could not be split like a shell would: {exc}", field="job-arguments") from exc
    if any("\0" in arg for arg in args):
        raise InvalidRequest("job-arguments cannot contain NUL characters", field="job-arguments")
    return args
