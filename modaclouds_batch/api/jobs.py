"""HTTP resources for /jobs: parse the request, call the job service, shape the answer."""

from __future__ import annotations

import os
from typing import Any, Callable
from urllib.parse import urlencode

import falcon

from ..errors import InvalidRequest, NotFound
from ..jobs.service import JobService
from ..jobs.submission import JobSubmission, Staging, SubmitRequest
from ..jobs.states import JobState
from ..store import JobFilter
from ..timefmt import parse_iso, to_iso
from .ranges import send_file
from .idempotency import current_claim, idempotent
from .submission import submission_from_request
from .bodies import json_object
from .views import array_view, job_detail, job_summary, notification_brief, notification_view

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def submit_job(submission: JobSubmission, quota, actor, parse: Callable[[Staging], SubmitRequest],
               on_submitted: Callable[[dict], None] | None = None) -> tuple[SubmitRequest, dict[str, Any]]:
    """The one submission path of every door: quota, staging, ``parse(staging)`` (uploads land
    in the staging folder), the quota again for the items asked, submit, then the hook.

    Anything raised on the way leaves nothing behind (no folder, no row, no cluster).
    Under an ``Idempotency-Key`` (api/idempotency.py) the key goes with the submission; when
    the key's jobs were recorded but their answer never sent, those jobs are returned
    instead (request None): nothing is parsed, charged or submitted again."""
    claim = current_claim()
    if claim is not None and claim.recovered is not None:
        return None, submission.keyed_submission(claim.recovered, actor)
    quota.check_submission(actor)
    with submission.staging(quota.limits_for(actor.user)["max_upload_bytes"]) as staging:
        request = parse(staging)
        if claim is not None:
            request.idempotency_key = claim.key
        quota.check_submission(actor, request.item_count)  # before validating archives
        created = submission.submit(staging, request)  # reserves its place (jobs, spool), atomically
    if on_submitted:
        on_submitted(created)
    return request, created


class JobsResource:
    def __init__(self, service: JobService, submission: JobSubmission, quota, on_submitted=None):
        self.service = service
        self.submission = submission
        self.quota = quota
        self.on_submitted = on_submitted

    @idempotent
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        actor = req.context.actor
        _, created = submit_job(self.submission, self.quota, actor,
                                lambda staging: submission_from_request(req, staging, actor), self.on_submitted)
        resp.status = falcon.HTTP_201
        if "items" in created:  # an array
            resp.location = f"/arrays/{created['id']}"
            resp.media = array_view(created)
        else:
            resp.location = f"/jobs/{created['id']}"
            resp.media = job_detail(created, self.service.events(created["id"], actor))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", min_value=1, max_value=MAX_PAGE, default=DEFAULT_PAGE)
        states = status_param(req)
        flt = JobFilter(
            owner=req.get_param("owner"),
            states=states,
            name_glob=req.get_param("name"),
            created_after=time_param(req, "created_after"),
            created_before=time_param(req, "created_before"),
            array_id=req.get_param("array_id"),
        )
        rows, next_cursor, total = self.service.list(req.context.actor, flt, limit, req.get_param("cursor"))
        resp.media = [job_summary(row) for row in rows]
        resp.set_header("X-Total-Count", str(total))
        if next_cursor:
            resp.set_header("X-Next-Cursor", next_cursor)
            query = {k: v for k, v in req.params.items() if k != "cursor"}
            query["cursor"] = next_cursor
            resp.append_link(f"{req.path}?{urlencode(query, doseq=True)}", "next")


class JobResource:
    def __init__(self, service: JobService, notifications=None):
        self.service = service
        self.notifications = notifications  # NotificationControl: the view's summary of them

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        job = self.service.get(job_id, req.context.actor)
        summary = self.notifications.summary(job["id"]) if self.notifications else None
        resp.media = job_detail(job, self.service.events(job["id"], req.context.actor), summary)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        """Forget the job (removing it first if still active): record, artifacts, answer object."""
        self.service.delete(job_id, req.context.actor, req.context.request_id)
        resp.status = falcon.HTTP_204


class JobActionResource:
    """POST /jobs/{id}/{action}; GET does the same for clients of the original API (legacy)."""

    def __init__(self, service: JobService):
        self.service = service

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str, action: str) -> None:
        actor = req.context.actor
        job = self.service.act(job_id, action, actor, req.context.request_id)
        resp.status = falcon.HTTP_202
        resp.media = {"job_id": job["id"], "action": action, "job_status": job["state"],
                      "job": job_detail(job, self.service.events(job["id"], actor))}

    on_get = on_post


class JobEventsResource:
    def __init__(self, service: JobService):
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        resp.media = self.service.events(job_id, req.context.actor)


class NotificationsResource:
    """The job's notifications, each with its delivery attempts."""

    def __init__(self, service: JobService):
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        resp.media = [notification_view(event) for event in self.service.notifications(job_id, req.context.actor)]


class NotificationResource:
    """One notification: GET it, PATCH {"url"} to redirect it (pending or failed ones)."""

    def __init__(self, service: JobService, control):
        self.service = service
        self.control = control

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str, event_id: str) -> None:
        found = [e for e in self.service.notifications(job_id, req.context.actor) if e["id"] == event_id]
        if not found:
            raise NotFound(f"job {job_id} has no notification {event_id}; GET /jobs/{job_id}/notifications lists them")
        resp.media = notification_view(found[0])

    def on_patch(self, req: falcon.Request, resp: falcon.Response, job_id: str, event_id: str) -> None:
        body = json_object(req)
        unknown = sorted(set(body) - {"url"})
        if unknown:
            raise InvalidRequest(f"unknown field '{unknown[0]}'; a notification's PATCH takes url", field=unknown[0])
        resp.media = notification_brief(self.control.redirect(job_id, event_id, body.get("url"), req.context.actor,
                                                              req.context.request_id))


class NotificationCancelResource:
    """POST /jobs/{id}/notifications/{event_id}/cancel: a pending notification is never sent."""

    def __init__(self, control):
        self.control = control

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str, event_id: str) -> None:
        resp.media = notification_brief(self.control.cancel(job_id, event_id, req.context.actor,
                                                            req.context.request_id))


class NotificationResendResource:
    def __init__(self, service: JobService, on_resend=None):
        self.service = service
        self.on_resend = on_resend

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str, event_id: str) -> None:
        self.service.resend_notification(job_id, event_id, req.context.actor, req.context.request_id)
        if self.on_resend:
            self.on_resend()
        resp.status = falcon.HTTP_202
        resp.media = {"event_id": event_id, "status": "pending"}


class ArtifactResource:
    CONTENT_TYPES = {"output": "application/gzip", "stdout": "text/plain; charset=utf-8",
                     "stderr": "text/plain; charset=utf-8"}

    def __init__(self, service: JobService):
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str, name: str) -> None:
        path = self.service.artifact(job_id, name, req.context.actor, req.context.request_id)
        resp.content_type = self.CONTENT_TYPES[name]
        if name == "output":
            resp.downloadable_as = f"{job_id}-output.tar.gz"
        fh = open(path, "rb")
        # A running job's stdout grows: every read is fresh, and a Range follows it.
        resp.cache_control = ["no-store"]
        send_file(req, resp, fh, os.fstat(fh.fileno()).st_size)


def status_param(req: falcon.Request) -> tuple[str, ...]:
    """The ``status`` filter: one state, a comma-separated list, or the parameter repeated
    (falcon 4 does not split commas); a clear 400 naming what is not a state."""
    states = tuple(s for value in req.get_param_as_list("status") or () for s in value.split(","))
    valid = {s.value for s in JobState}
    bad = [s for s in states if s not in valid]
    if bad:
        raise InvalidRequest(f"unknown status {', '.join(bad)}; statuses are {', '.join(sorted(valid))}",
                             field="status")
    return states


def time_param(req: falcon.Request, name: str) -> str | None:
    """An ISO-8601 query parameter, normalised for the store; a clear 400 when it is not one."""
    raw = req.get_param(name)
    if raw is None:
        return None
    try:
        return to_iso(parse_iso(raw))
    except ValueError:
        raise InvalidRequest(f"{name} must be an ISO-8601 time such as 2026-01-31T12:00:00Z", field=name) from None


class ArrayResource:
    def __init__(self, service: JobService):
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response, array_id: str) -> None:
        resp.media = array_view(self.service.get_array(array_id, req.context.actor))
