"""Seed 002, the long-running-job pattern: POST answers 202 with a status link to poll;
DELETE .../cancel stops the job (204) and keeps it; .../result exists once it is complete.

Bodies are POST /jobs' own (multipart, urlencoded, JSON); one job per request.
"""

from __future__ import annotations

from urllib.parse import urlencode

import falcon

from ..api.idempotency import idempotent
from ..api.jobs import DEFAULT_PAGE, MAX_PAGE, submit_job
from ..api.submission import submission_from_request
from ..errors import Conflict, InvalidRequest
from ..jobs.states import ACTION_ALLOWED_FROM, JobAction, JobState
from ..store import JobFilter
from . import Dialect, submission_hook, word_filter

BASE = "/async/jobs"

# Core state -> the seed's word. Held jobs have started (been accepted) but wait in the
# queue (`reason` says why); suspended ones are paused on their node: still running.
STATES = {
    JobState.IDLE: "started",
    JobState.HELD: "started",
    JobState.RUNNING: "running",
    JobState.SUSPENDED: "running",
    JobState.COMPLETED: "complete",
    JobState.FAILED: "failed",
    JobState.SUBMISSION_ERROR: "failed",
    JobState.REMOVED: "cancelled",
}
CANCELLABLE = ACTION_ALLOWED_FROM[JobAction.REMOVE]


def links(job_id: str) -> dict[str, str]:
    base = f"{BASE}/{job_id}"
    return {"status": f"{base}/status", "cancel": f"{base}/cancel", "result": f"{base}/result"}


def status_view(job: dict) -> dict:
    """The seed's status: the word, and the cancel link while it can be cancelled, the result link once complete."""
    state = JobState(job["state"])
    view = {"id": job["id"], "status": STATES[state], "reason": job.get("state_reason")}
    if state in CANCELLABLE:
        view["cancel"] = links(job["id"])["cancel"]
    if state is JobState.COMPLETED:
        view["result"] = links(job["id"])["result"]
    return view


def result_view(job: dict) -> dict:
    """A complete job's outputs: where its output archive, stdout, stderr and answer object are."""
    artifacts = f"/jobs/{job['id']}/artifacts"
    return {
        "id": job["id"], "status": STATES[JobState(job["state"])], "exit_status": job.get("exit_status"),
        "output": f"{artifacts}/output", "stdout": f"{artifacts}/stdout", "stderr": f"{artifacts}/stderr",
        "answer_id": job.get("answer_id"),
        "answer": f"/data/{job['answer_id']}" if job.get("answer_id") else None,
    }


def _one_job(request):
    if request.is_array:
        raise InvalidRequest(f"{BASE} takes one job per request; submit arrays with POST /jobs", field="job-array")
    return request


class CollectionResource:
    def __init__(self, gateway):
        self.service = gateway.service
        self.submission = gateway.submission
        self.quota = gateway.quota
        self.on_submitted = submission_hook(gateway)

    @idempotent
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        actor = req.context.actor
        _, created = submit_job(self.submission, self.quota, actor,
                                lambda staging: _one_job(submission_from_request(req, staging, actor)),
                                self.on_submitted)
        status = links(created["id"])["status"]
        resp.status = falcon.HTTP_202
        resp.location = status
        resp.media = {"id": created["id"], "status": status}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        words = [w.strip() for value in req.get_param_as_list("status") or () for w in value.split(",") if w.strip()]
        states = word_filter(STATES, words, "status") if words else ()
        limit = req.get_param_as_int("limit", min_value=1, max_value=MAX_PAGE, default=DEFAULT_PAGE)
        rows, next_cursor, _ = self.service.list(req.context.actor, JobFilter(states=states), limit,
                                                 req.get_param("cursor"))
        resp.media = {"jobs": [{"id": row["id"], "status": STATES[JobState(row["state"])],
                                "link": links(row["id"])["status"]} for row in rows]}
        if next_cursor:
            query = {k: v for k, v in req.params.items() if k != "cursor"}
            resp.media["next"] = f"{BASE}?{urlencode({**query, 'cursor': next_cursor}, doseq=True)}"


class StatusResource:
    def __init__(self, gateway):
        self.service = gateway.service

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        resp.media = status_view(self.service.get(job_id, req.context.actor))


class CancelResource:
    def __init__(self, gateway):
        self.service = gateway.service

    def on_delete(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        actor = req.context.actor
        job = self.service.get(job_id, actor)
        if JobState(job["state"]).is_final:
            word = STATES[JobState(job["state"])]
            raise Conflict(f"job {job['id']} is already {word}; only started or running jobs can be cancelled",
                           status=word)
        try:
            self.service.act(job["id"], JobAction.REMOVE.value, actor, req.context.request_id)
        except Conflict as exc:
            raise Conflict(exc.message, status=STATES[JobState(self.service.get(job_id, actor)["state"])]) from None
        resp.status = falcon.HTTP_204


class ResultResource:
    def __init__(self, gateway):
        self.service = gateway.service

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        job = self.service.get(job_id, req.context.actor)
        state = JobState(job["state"])
        word = STATES[state]
        if state is JobState.COMPLETED:
            resp.media = result_view(job)
            return
        if not state.is_final:
            raise Conflict(f"job {job['id']} is {word}; its result exists once its status is complete: "
                           f"poll {links(job['id'])['status']}", status=word)
        if state is JobState.FAILED:
            raise Conflict(f"job {job['id']} failed ({job.get('state_reason') or 'non-zero exit'}), so it has no "
                           f"result; its stderr is at /jobs/{job['id']}/artifacts/stderr", status=word)
        raise Conflict(f"job {job['id']} is {word}; it will never have a result", status=word)


def register(app, gateway) -> None:
    app.add_route(BASE, CollectionResource(gateway))
    app.add_route(f"{BASE}/{{job_id}}/status", StatusResource(gateway))
    app.add_route(f"{BASE}/{{job_id}}/cancel", CancelResource(gateway))
    app.add_route(f"{BASE}/{{job_id}}/result", ResultResource(gateway))


DIALECT = Dialect(
    name="Long-running jobs",
    seed="002",
    base=BASE,
    docs="docs/dialect-002-long-running.md",
    register=register,
    states=STATES,
    openapi="long_running.openapi.json",
)
