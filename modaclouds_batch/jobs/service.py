"""Jobs as their owners see them: read, list, act on, delete, collect artifacts.

Submission is jobs/submission.py's, expiry jobs/retention.py's, the poll loop jobs/tracker.py's.
Knows jobs, the store and the condor adapter; knows nothing of HTTP.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..condor import submit_description as sd
from ..condor.job_ad import STATUS_PROJECTION, CondorAction
from ..condor.schedd import CondorClient, CondorUnavailable
from ..access.audit import AuditLog
from ..access.identity import Actor
from ..data.service import DataService
from ..errors import BackendUnavailable, Conflict, Forbidden, Gone, InvalidRequest, NotFound, NotYet, NotYours
from ..settings import Settings
from ..store import JobFilter, Store
from ..timefmt import now_iso
from . import dependencies, live_output
from .ad_changes import changes_from_ads, keep_output_of_removed
from .states import JobAction, JobState, action_conflict

log = logging.getLogger(__name__)

ARTIFACT_FILES = {"output": sd.OUTPUT_FILE, "stdout": sd.STDOUT_FILE, "stderr": sd.STDERR_FILE}
# Seconds an action waits for a just-submitted job's input spooling hold to end.
SPOOLING_WAIT = 10.0
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def check_job_id(job_id: str, field_name: str | None = None) -> str:
    """Ids are UUIDs; anything else is a malformed request rather than an unknown job."""
    if not _UUID_RE.match(job_id.lower()):
        where = f"{field_name}: " if field_name else ""
        raise InvalidRequest(f"{where}'{job_id}' is not a job id; job ids are UUIDs such as the job_id POST /jobs "
                             "returned", **({"field": field_name} if field_name else {}))
    return job_id.lower()


class JobService:
    """Reads and actions on recorded jobs, each checked against who asks."""

    def __init__(self, settings: Settings, store: Store, condor: CondorClient, audit: AuditLog, data: DataService):
        self.settings = settings
        self.store = store
        self.condor = condor
        self.audit = audit
        self.data = data
        # Told the ids of jobs just acted on (app.py: the tracker watches them, since a job
        # removed while idle leaves the queue before any change query could see it go).
        self.on_acted: Callable[[list[str]], None] = lambda job_ids: None

    # --- reads ------------------------------------------------------------------

    def get(self, job_id: str, actor: Actor) -> dict[str, Any]:
        """The job, if ``actor`` may see it; another user's job is 'not found' so ids do not leak."""
        job = self.store.get_job(check_job_id(job_id))
        if job is None or not actor.may_see(job["owner"]):
            message = f"no job with id {job_id}; GET /jobs lists the jobs you can see"
            raise NotFound(message) if job is None else NotYours(message, target=job_id)
        if job.get("expired_at"):
            raise Gone(f"job {job_id} expired at {job['expired_at']}; its record and artifacts were cleaned up",
                       expired_at=job["expired_at"])
        edges = self.store.dependencies_of([job["id"]]).get(job["id"], [])
        job["after"] = [after_id for after_id, mode in edges if mode == dependencies.AFTER_OK]
        job["after_any"] = [after_id for after_id, mode in edges if mode == dependencies.AFTER_ANY]
        return job

    def get_array(self, array_id: str, actor: Actor) -> dict[str, Any]:
        array = self.store.get_array(check_job_id(array_id))
        if array is None or not actor.may_see(array["owner"]):
            message = f"no array with id {array_id}"
            raise NotFound(message) if array is None else NotYours(message, target=array_id)
        items = self.store.array_items(array["id"])
        counts: dict[str, int] = {}
        for item in items:
            counts[item["state"]] = counts.get(item["state"], 0) + 1
        return {**array, "counts": counts, "items": items}

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
        state = JobState(job["state"])
        found = path if path.is_file() and (job["outputs_retrieved_at"] or state is JobState.REMOVED) else None
        if found is None and name != "output" and not state.is_final:
            found = live_output.live_file(job.get("live_dir"), ARTIFACT_FILES[name])
        if found is not None:
            self.audit.record(actor, "job.download", job["id"], detail={"artifact": name}, request_id=request_id)
            return found
        if state is JobState.REMOVED or state is JobState.SUBMISSION_ERROR:
            raise NotFound(f"the job is {state.value} and produced no {name}", job_status=state.value)
        if state.is_final:
            raise NotFound(f"the {name} of this job could not be retrieved: {job['state_reason'] or 'unknown reason'}",
                           job_status=state.value)
        when = "once it ends" if name == "output" or not self.settings.live_output_enabled else "once it starts"
        raise NotYet(f"the job is {state.value}; its {name} is available {when}",
                     retry_after=max(1, round(self.settings.tracker_interval)), job_status=state.value)

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
        if action is JobAction.RELEASE and job.get("awaiting_dependencies") and job["state"] == JobState.IDLE.value:
            raise Conflict(f"job {job['id']} is {job.get('state_reason') or 'waiting for its dependencies'}: it starts "
                           "by itself once they complete, and release cannot start it earlier; remove it if it "
                           "should not run", job_status=job["state"])
        conflict = action_conflict(action, JobState(job["state"]))
        if conflict:
            raise Conflict(conflict, job_status=job["state"])
        constraint = sd.jobs_constraint(self.store.instance_id, [job["id"]])
        reason = f"{action.value} requested by {actor.user} through the gateway"
        if action is JobAction.REMOVE:
            # What it printed so far, in case its spool is gone before the tracker sees it removed.
            live_output.keep(job.get("live_dir"), job["job_dir"])
        try:
            result = self.condor.act(CondorAction(action.value), constraint, reason)
            # Just after submission the schedd still holds the job while its input files
            # settle ("Spooling input data files"); act again once that hold is over.
            deadline = time.monotonic() + SPOOLING_WAIT
            while result.get("TotalSuccess", 0) < 1 and time.monotonic() < deadline and self._spooling(constraint):
                time.sleep(0.25)
                result = self.condor.act(CondorAction(action.value), constraint, reason)
        except CondorUnavailable as exc:
            raise BackendUnavailable(f"HTCondor does not answer; retry the {action.value} later ({exc})") from exc
        if result.get("TotalSuccess", 0) < 1:
            raise Conflict(
                f"HTCondor did not {action.value} the job (it may have just changed state); "
                "GET the job and try again", job_status=job["state"], condor_result=result,
            )
        self.audit.record(actor, f"job.{action.value}", job["id"], request_id=request_id)
        self.refresh([job])
        self.on_acted([job["id"]])
        return self.get(job["id"], actor)

    def delete(self, job_id: str, actor: Actor, request_id: str | None = None) -> dict[str, Any]:
        """Forget a job: remove it from HTCondor if it is still active, then delete its record
        (events, notifications), its folder (artifacts) and its answer object. Returns the job
        as it was; afterwards its id is unknown (404), not expired (410)."""
        job = self.store.get_job(check_job_id(job_id))
        if job is None or not actor.may_see(job["owner"]):
            raise NotFound(f"no job with id {job_id}; GET /jobs lists the jobs you can see")
        if not JobState(job["state"]).is_final and not job.get("expired_at"):
            constraint = sd.jobs_constraint(self.store.instance_id, [job["id"]])
            try:
                self.condor.act(CondorAction.REMOVE, constraint, f"deleted by {actor.user} through the gateway")
            except CondorUnavailable as exc:
                raise BackendUnavailable(f"HTCondor does not answer, so the job was not deleted; retry later ({exc})") from exc
        self.store.delete_job(job["id"])
        if job.get("job_dir"):
            shutil.rmtree(job["job_dir"], ignore_errors=True)
        if job.get("answer_id"):
            self.data.discard_answer(job["answer_id"], job["id"])
        self.audit.record(actor, "job.delete", job["id"], request_id=request_id, detail={"state": job["state"]})
        return job

    def _spooling(self, constraint: str) -> bool:
        ads = self.condor.query(constraint, STATUS_PROJECTION)
        return bool(ads) and ads[0].spooling_input
    def refresh(self, jobs: list[dict[str, Any]]) -> None:
        """Bring a few jobs' states up to date at once (after an action), without retrieval."""
        constraint = sd.jobs_constraint(self.store.instance_id, [j["id"] for j in jobs])
        try:
            ads = self.condor.query(constraint, sd.JOB_PROJECTION)
        except CondorUnavailable as exc:
            log.warning("could not refresh jobs after an action: %s", exc)
            return
        by_id = {ad.gateway_job_id: ad for ad in ads}
        changes = []
        for job in jobs:
            ad = by_id.get(job["id"])
            change = changes_from_ads(job, ad, final_allowed=False) if ad is not None else None
            if change:
                keep_output_of_removed(job, ad, change)
                changes.append(change)
        self.store.apply_job_changes(changes)

