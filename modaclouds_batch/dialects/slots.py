"""Seed 000, slot leases: ``new_job/`` leases one of a limited number of slots as a
``worker-id`` (single use, expiring); the worker-id then starts a job, an upload or a
download, which ``modify`` pauses, resumes or terminates and ``status`` reports.

The job answer waits for the job's end: a streamed JSON body, kept alive with newlines (JSON
whitespace) while the job runs. Leases, jobs and transfers are the lease service's
(jobs/leases.py); jobs are the one job service's, data the one data service's.
"""

from __future__ import annotations

import json
import time

import falcon

from ..api.bodies import json_object
from ..api.data import upload_from_request
from ..api.idempotency import current_claim, idempotent
from ..api.jobs import submit_job
from ..api.submission import submission_from_request
from ..errors import GatewayError, Gone, InvalidRequest, NotFound, NotYet
from ..jobs.leases import PACED_CHUNK, PacedReader, SlotLeases, Transfer, TransferTerminated
from ..jobs.states import JobAction, JobState
from . import Dialect, submission_hook

BASE = "/slots"

# Core state -> the seed's word. An unused lease and a queued or held job have not started
# (Not Running); a suspended job or a paused transfer is Paused; whatever ended by itself is
# Completed (a job's exit_status tells success from failure); whatever was stopped, by a
# modify, an admin, its ttl or HTCondor, is Terminated (``reason`` says why).
STATES = {
    JobState.IDLE: "Not Running",
    JobState.HELD: "Not Running",
    JobState.RUNNING: "Running",
    JobState.SUSPENDED: "Paused",
    JobState.COMPLETED: "Completed",
    JobState.FAILED: "Completed",
    JobState.REMOVED: "Terminated",
    JobState.SUBMISSION_ERROR: "Terminated",
}
# The statuses modify sets, and the action each one is; the others are the gateway's to set.
MODIFY_ACTIONS = {"Paused": JobAction.SUSPEND, "Running": JobAction.CONTINUE, "Terminated": JobAction.REMOVE}
READ_ONLY = ("Completed", "Not Running")
# While a job answer waits: seconds between looks at the job, and between two keep-alive newlines.
POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 10.0
# How long modify waits for HTCondor to show the new status before answering what it shows.
MODIFY_WAIT_SECONDS = 30.0
DOWNLOAD_EXAMPLE = '{"data_id": "<id>"} or {"job_id": "<id>", "artifact": "output"}'
ARTIFACT_TYPES = {"output": "application/gzip", "stdout": "text/plain; charset=utf-8",
                  "stderr": "text/plain; charset=utf-8"}


def free_slots(infra) -> int:
    """One-CPU jobs the pool could start now: the free CPUs of the workers that take jobs, as
    the collector last said (a partitionable slot's unclaimed CPUs included)."""
    return sum(int(worker.get("cpus_free") or 0) for worker in infra.capacity())


def lease_view(leases: SlotLeases, actor, lease: dict) -> dict:
    """What status (and every final answer) shows of a lease."""
    state, job = leases.state(actor, lease)
    view = {"worker-id": lease["worker_id"], "status": STATES[state], "state": state.value,
            "kind": lease["kind"], "expires_at": lease["expires_at"] if lease["used_at"] is None else None,
            "reason": lease["reason"]}
    if lease["kind"] == "job":
        view["job_id"] = lease["job_id"]
        if job is not None:
            artifacts = f"/jobs/{job['id']}/artifacts"
            view.update(reason=job.get("state_reason"), exit_status=job.get("exit_status"),
                        links={"job": f"/jobs/{job['id']}", "stdout": f"{artifacts}/stdout",
                               "stderr": f"{artifacts}/stderr", "output": f"{artifacts}/output"})
    elif lease["kind"] in ("upload", "download"):
        view["bytes"] = leases.bytes_moved(lease)
        if lease["data_id"]:
            view["data_id"] = lease["data_id"]
            view["data"] = f"/data/{lease['data_id']}"
    return view


class NewJobResource:
    def __init__(self, leases: SlotLeases):
        self.leases = leases

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        lease = self.leases.grant(req.context.actor, req.context.request_id)
        resp.location = f"{BASE}/status/{lease['worker_id']}"
        resp.media = {"worker-id": lease["worker_id"], "expires_at": lease["expires_at"]}


class StatusResource:
    def __init__(self, leases: SlotLeases):
        self.leases = leases

    def on_get(self, req: falcon.Request, resp: falcon.Response, worker_id: str) -> None:
        actor = req.context.actor
        resp.media = lease_view(self.leases, actor, self.leases.find(actor, worker_id))


class ModifyResource:
    def __init__(self, leases: SlotLeases):
        self.leases = leases

    def on_post(self, req: falcon.Request, resp: falcon.Response, worker_id: str, new_job_status: str) -> None:
        actor = req.context.actor
        if new_job_status in READ_ONLY:
            raise InvalidRequest(f"{new_job_status} is read-only (the gateway sets it); modify takes "
                                 f"{', '.join(MODIFY_ACTIONS)}", field="new_job_status")
        action = MODIFY_ACTIONS.get(new_job_status)
        if action is None:
            raise InvalidRequest(f"unknown status {new_job_status!r}; modify takes {', '.join(MODIFY_ACTIONS)} "
                                 f"({', '.join(READ_ONLY)} are read-only)", field="new_job_status")
        self.leases.modify(actor, worker_id, action, req.context.request_id)
        resp.media = self._settled(actor, worker_id, new_job_status)

    def _settled(self, actor, worker_id: str, wanted: str) -> dict:
        """The lease once it shows ``wanted`` (HTCondor suspends, resumes and removes
        asynchronously), or as it is after MODIFY_WAIT_SECONDS."""
        deadline = time.monotonic() + MODIFY_WAIT_SECONDS
        while True:
            lease = self.leases.find(actor, worker_id)
            view = lease_view(self.leases, actor, lease)
            if view["status"] in (wanted, "Completed", "Terminated"):
                return view
            if time.monotonic() >= deadline:
                return {**view, "requested": wanted}
            time.sleep(POLL_SECONDS)
            self.leases.refresh(lease)  # what the schedd says now (the tracker records removals)


class JobNewResource:
    def __init__(self, leases: SlotLeases, gateway):
        self.leases = leases
        self.jobs = gateway.service
        self.submission = gateway.submission
        self.quota = gateway.quota
        self.on_submitted = submission_hook(gateway)

    @idempotent
    def on_post(self, req: falcon.Request, resp: falcon.Response, worker_id: str) -> None:
        actor = req.context.actor
        wait = req.get_param_as_bool("wait", default=True)
        # A retry with the Idempotency-Key of a request whose job exists (its answer was lost,
        # or streamed and so never kept) finds the lease used by that request: it reattaches
        # to the job (submit_job returns it) instead of being refused as a reused lease.
        claim = current_claim()
        reattaching = claim is not None and claim.recovered is not None
        if not reattaching:
            self.leases.claim(actor, worker_id, "job")
        try:
            _, created = submit_job(self.submission, self.quota, actor,
                                    lambda staging: _one_job(submission_from_request(req, staging, actor)),
                                    self.on_submitted)
        except BaseException:
            if not reattaching:
                self.leases.release(worker_id)  # the lease stays usable for a corrected request
            raise
        self.leases.bind_job(worker_id, created["id"])
        resp.location = f"{BASE}/status/{worker_id}"
        resp.set_header("X-Job-Id", created["id"])
        if not wait:
            resp.status = falcon.HTTP_202
            resp.media = lease_view(self.leases, actor, self.leases.find(actor, worker_id))
            return
        resp.content_type = falcon.MEDIA_JSON
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = self._until_final(actor, worker_id, req.env.get("waitress.client_disconnected"))

    def _until_final(self, actor, worker_id: str, client_gone):
        """The answer's body: newlines (JSON whitespace) while the job runs, then its final view.
        A client that hangs up stops the wait, not the job."""
        client_gone = client_gone or (lambda: False)
        yield b"\n"  # the headers (X-Job-Id, Location) go out at once
        last = time.monotonic()
        while True:
            lease = self.leases.find(actor, worker_id)
            state, _ = self.leases.state(actor, lease)
            if state.is_final:
                yield json.dumps(lease_view(self.leases, actor, lease)).encode() + b"\n"
                return
            if client_gone():
                return
            if time.monotonic() - last >= KEEPALIVE_SECONDS:
                yield b"\n"
                last = time.monotonic()
            time.sleep(POLL_SECONDS)


def _one_job(request):
    if request.is_array:
        raise InvalidRequest("a lease runs one job; submit arrays with POST /jobs", field="job-array")
    return request


class UploadNewResource:
    def __init__(self, leases: SlotLeases, gateway):
        self.leases = leases
        self.data = gateway.service.data
        self.quota = gateway.quota

    def on_post(self, req: falcon.Request, resp: falcon.Response, worker_id: str) -> None:
        actor = req.context.actor
        transfer = self.leases.start_transfer(actor, worker_id, "upload")
        try:
            stream, filename, content_type, ttl = upload_from_request(req)
            # receive_stream keeps the bytes aside and makes them a data object only once complete.
            row = self.data.create(actor, PacedReader(stream, transfer), filename=filename,
                                   content_type=content_type, ttl=ttl,
                                   limit=self.quota.limits_for(actor.user)["max_upload_bytes"],
                                   request_id=req.context.request_id)
        except TransferTerminated:
            lease = self.leases.finish_transfer(transfer, JobState.REMOVED)
        except (GatewayError, falcon.HTTPError):
            self.leases.give_back(transfer)  # a refused body (400, 413, 415): nothing kept, the lease usable again
            raise
        except BaseException as exc:
            self.leases.finish_transfer(transfer, JobState.REMOVED, reason=f"the upload failed: {exc}")
            raise
        else:
            lease = self.leases.finish_transfer(transfer, JobState.COMPLETED, data_id=row["id"])
        resp.media = lease_view(self.leases, actor, lease)


class DownloadNewResource:
    def __init__(self, leases: SlotLeases, gateway):
        self.leases = leases
        self.jobs = gateway.service

    def on_post(self, req: falcon.Request, resp: falcon.Response, worker_id: str) -> None:
        actor = req.context.actor
        self.leases.find(actor, worker_id)  # a bad worker-id is refused before the body is read
        path, size, filename, content_type, sha256 = self._source(actor, json_object(req), req.context.request_id)
        fh = open(path, "rb")
        try:
            transfer = self.leases.start_transfer(actor, worker_id, "download")
        except BaseException:
            fh.close()
            raise
        resp.content_type = content_type
        resp.downloadable_as = filename
        resp.set_header("X-Data-Size", str(size))
        if sha256:
            resp.set_header("X-Data-Sha256", sha256)
        resp.location = f"{BASE}/status/{worker_id}"
        resp.stream = _Sending(self.leases, transfer, fh)

    def _source(self, actor, body: dict, request_id):
        """(path, size, file name, content type, sha256 or None) of what the body names; an
        unknown or expired id in the body is a wrong request (400), an output not there yet 404."""
        try:
            return self._named(actor, body, request_id)
        except NotYet:
            raise
        except (NotFound, Gone) as exc:
            raise InvalidRequest(exc.message, **{"field": "data_id" if body.get("data_id") else "job_id",
                                                 **exc.details}) from None

    def _named(self, actor, body: dict, request_id):
        unknown = sorted(set(body) - {"data_id", "job_id", "artifact"})
        if unknown:
            raise InvalidRequest(f"unknown field '{unknown[0]}'; send {DOWNLOAD_EXAMPLE}", field=unknown[0])
        for key in ("data_id", "job_id", "artifact"):
            if key in body and not isinstance(body[key], str):
                raise InvalidRequest(f"{key} must be a string; send {DOWNLOAD_EXAMPLE}", field=key)
        if bool(body.get("data_id")) == bool(body.get("job_id")):
            raise InvalidRequest(f"name one data object or one job: {DOWNLOAD_EXAMPLE}", field="data_id")
        if body.get("data_id"):
            if "artifact" in body:
                raise InvalidRequest("artifact goes with job_id, not data_id", field="artifact")
            row = self.jobs.data.for_job(actor, body["data_id"], "data_id")
            return row["path"], row["size"], row["filename"], "application/octet-stream", row["sha256"]
        artifact = body.get("artifact", "output")
        if artifact not in ARTIFACT_TYPES:
            raise InvalidRequest(f"artifact must be one of {', '.join(ARTIFACT_TYPES)}", field="artifact")
        path = self.jobs.artifact(body["job_id"], artifact, actor, request_id)
        name = f"{body['job_id']}-output.tar.gz" if artifact == "output" else f"{body['job_id']}-{artifact}.txt"
        return path, path.stat().st_size, name, ARTIFACT_TYPES[artifact], None


class _Sending:
    """A download's body, through the transfer's gate; close() (called by the server on
    every ending, a client gone or a body never started included) records how it ended."""

    def __init__(self, leases: SlotLeases, transfer: Transfer, fh):
        self.leases = leases
        self.transfer = transfer
        self.fh = fh
        self.ended: tuple[JobState, str | None] = (JobState.REMOVED, "the client went away")

    def __iter__(self):
        try:
            while chunk := self.fh.read(PACED_CHUNK):
                self.transfer.gate(len(chunk))
                yield chunk
            self.ended = (JobState.COMPLETED, None)
        except TransferTerminated:
            self.ended = (JobState.REMOVED, None)

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()
            self.leases.finish_transfer(self.transfer, *self.ended)


def register(app, gateway) -> None:
    settings = gateway.settings
    leases = SlotLeases(gateway.store, gateway.service, lambda: free_slots(gateway.infra), gateway.audit,
                        lease_seconds=settings.slot_lease_seconds, max_leased=settings.max_leased_slots,
                        bytes_per_second=settings.slot_transfer_bytes_per_second)
    app.add_route(f"{BASE}/new_job", NewJobResource(leases))
    app.add_route(f"{BASE}/status/{{worker_id}}", StatusResource(leases))
    app.add_route(f"{BASE}/modify/{{worker_id}}/{{new_job_status}}", ModifyResource(leases))
    app.add_route(f"{BASE}/job/new/{{worker_id}}", JobNewResource(leases, gateway))
    app.add_route(f"{BASE}/upload/new/{{worker_id}}", UploadNewResource(leases, gateway))
    app.add_route(f"{BASE}/download/new/{{worker_id}}", DownloadNewResource(leases, gateway))


DIALECT = Dialect(
    name="Slot leases",
    seed="000",
    base=BASE,
    docs="docs/dialect-000-slots.md",
    register=register,
    states=STATES,
    openapi="slots.openapi.json",
)
