"""Seed 001, the job manager (in Russian): /api/job/run, job_info, list_jobs, cancel, delete.

Its clients send JSON with curl's ``--data`` (so the content type says urlencoded) and
trailing commas; bodies are read as JSON5 whatever their content type. Every route calls
the job service; only the words, shapes and status codes are the seed's.
"""

from __future__ import annotations

from urllib.parse import urlencode

import falcon

from ..api.bodies import lenient_json_object
from ..api.idempotency import idempotent
from ..api.jobs import MAX_PAGE, submit_job, time_param
from ..api.submission import submission_from_json
from ..errors import Conflict, Gone, InvalidRequest, NotFound
from ..jobs.states import JobAction, JobState
from ..store import JobFilter
from . import Dialect, submission_hook, word_filter

BASE = "/api/job"
# The seed's own list sample is /api/list_jobs: answered there too.
LIST_ALIAS = "/api/list_jobs"

# Core state -> the seed's word. Held jobs wait in the queue like idle ones (job_info's
# `reason` says why); suspended ones are paused on their node and resume where they were.
STATES = {
    JobState.IDLE: "SCHEDULED",
    JobState.HELD: "SCHEDULED",
    JobState.RUNNING: "RUNNING",
    JobState.SUSPENDED: "RUNNING",
    JobState.COMPLETED: "DONE",
    JobState.FAILED: "FAILED",
    JobState.SUBMISSION_ERROR: "FAILED",
    JobState.REMOVED: "CANCELLED",
}
# The seed's word no state maps to: the gateway answers 201 only once HTCondor queued the job.
UNUSED_WORDS = ("SUBMITTED",)

RUN_FIELDS = ("command", "binary", "input_files", "ttl")
RUN_EXAMPLE = '{"command": "uname -a | wc -l"}'
ID_EXAMPLE = '{"job_id": "dc4eec6e-4e34-49a7-8fe8-8e19d5bfb8a4"}'
LIST_PARAMS = ("state", "user", "created_after", "created_before", "limit", "cursor")


def run_body(body: dict) -> dict:
    """The seed's run fields, checked; a ttl of 0 means none (the seed's ttl is a uint64)."""
    unknown = sorted(set(body) - set(RUN_FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field '{unknown[0]}'; run takes {', '.join(RUN_FIELDS)}", field=unknown[0])
    command = body.get("command")
    if not isinstance(command, str) or not command.strip():
        raise InvalidRequest(f"command is required: the command line to run, e.g. {RUN_EXAMPLE}", field="command")
    binary = body.get("binary")
    if binary is not None and not isinstance(binary, str):
        raise InvalidRequest("binary must be a data id (a UUID POST /data returned)", field="binary")
    files = body.get("input_files")
    if files is not None and (not isinstance(files, list) or not all(isinstance(f, str) for f in files)):
        raise InvalidRequest("input_files must be a list of data ids (UUIDs POST /data returned)", field="input_files")
    ttl = body.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0):
        raise InvalidRequest("ttl must be a non-negative whole number of seconds (0: no ttl)", field="ttl")
    return {"command": command, "binary": binary, "input_files": files or [], "ttl": ttl or None}


def job_id_from(req: falcon.Request) -> str:
    body = lenient_json_object(req, ID_EXAMPLE)
    job_id = body.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise InvalidRequest(f"job_id is required, e.g. {ID_EXAMPLE}", field="job_id")
    unknown = sorted(set(body) - {"job_id"})
    if unknown:
        raise InvalidRequest(f"unknown field '{unknown[0]}'; the body is {ID_EXAMPLE}", field=unknown[0])
    return job_id


def job_info(job: dict) -> dict:
    state = JobState(job["state"])
    return {"state": STATES[state], "answer_id": job.get("answer_id") if state.is_final else None,
            "reason": job.get("state_reason")}


class RunResource:
    def __init__(self, gateway):
        self.service = gateway.service
        self.submission = gateway.submission
        self.quota = gateway.quota
        self.on_submitted = submission_hook(gateway)

    @idempotent
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        actor = req.context.actor
        fields = run_body(lenient_json_object(req, RUN_EXAMPLE))
        try:
            _, created = submit_job(self.submission, self.quota, actor,
                                    lambda staging: submission_from_json(fields, actor, req.context.request_id),
                                    self.on_submitted)
        except (NotFound, Gone) as exc:  # an unknown or expired data id: the seed says 400
            raise InvalidRequest(exc.message, **exc.details) from None
        resp.status = falcon.HTTP_201
        resp.location = f"{BASE}/job_info/{created['id']}"
        resp.media = {"job_id": created["id"]}


class JobInfoResource:
    def __init__(self, gateway):
        self.service = gateway.service

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        resp.media = job_info(self.service.get(job_id, req.context.actor))


class ListJobsResource:
    """Newest first; filters by state (the seed's words), user (admins), creation time."""

    def __init__(self, gateway):
        self.service = gateway.service

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        unknown = sorted(set(req.params) - set(LIST_PARAMS))
        if unknown:
            raise InvalidRequest(f"unknown filter '{unknown[0]}'; list_jobs takes {', '.join(LIST_PARAMS)}",
                                 field=unknown[0])
        words = [w.strip().upper() for value in req.get_param_as_list("state") or () for w in value.split(",") if w.strip()]
        states = word_filter(STATES, words, "state", UNUSED_WORDS) if words else ()
        limit = req.get_param_as_int("limit", min_value=1, max_value=MAX_PAGE, default=MAX_PAGE)
        if words and not states:
            resp.media = {"job_ids": []}
            return
        flt = JobFilter(owner=req.get_param("user"), states=states,
                        created_after=time_param(req, "created_after"),
                        created_before=time_param(req, "created_before"))
        rows, next_cursor, _ = self.service.list(req.context.actor, flt, limit, req.get_param("cursor"))
        resp.media = {"job_ids": [row["id"] for row in rows]}
        if next_cursor:
            query = {k: v for k, v in req.params.items() if k != "cursor"}
            resp.media["next"] = f"{req.path}?{urlencode({**query, 'cursor': next_cursor}, doseq=True)}"


class CancelResource:
    """POST: stop the job and keep its record (CANCELLED). DELETE: the seed's delete sample
    call is `curl .../api/job/cancel -X DELETE`, so DELETE here deletes, as /delete does."""

    def __init__(self, gateway):
        self.service = gateway.service

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        job_id = job_id_from(req)
        actor = req.context.actor
        try:
            job = self.service.act(job_id, JobAction.REMOVE.value, actor, req.context.request_id)
        except Conflict as exc:  # the seed answers 400 for what cannot be done
            raise InvalidRequest(_cancel_refusal(self.service.get(job_id, actor), exc)) from None
        resp.media = {"job_id": job["id"]}

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        delete(self.service, req, resp)


class DeleteResource:
    def __init__(self, gateway):
        self.service = gateway.service

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        delete(self.service, req, resp)


def delete(service, req: falcon.Request, resp: falcon.Response) -> None:
    """Remove the job if still active, delete its record and artifacts; job_info is then 404."""
    job = service.delete(job_id_from(req), req.context.actor, req.context.request_id)
    resp.media = {"job_id": job["id"]}


def _cancel_refusal(job: dict, exc: Conflict) -> str:
    state = JobState(job["state"])
    if state.is_final:
        return f"job {job['id']} is already {STATES[state]}; only SCHEDULED or RUNNING jobs can be cancelled"
    return exc.message


def register(app, gateway) -> None:
    app.add_route(f"{BASE}/run", RunResource(gateway))
    app.add_route(f"{BASE}/job_info/{{job_id}}", JobInfoResource(gateway))
    app.add_route(f"{BASE}/list_jobs", ListJobsResource(gateway))
    app.add_route(LIST_ALIAS, ListJobsResource(gateway))
    app.add_route(f"{BASE}/cancel", CancelResource(gateway))
    app.add_route(f"{BASE}/delete", DeleteResource(gateway))


DIALECT = Dialect(
    name="Job manager",
    seed="001",
    base=BASE,
    docs="docs/dialect-001-job-manager.md",
    register=register,
    states=STATES,
    openapi="job_manager.openapi.json",
)
