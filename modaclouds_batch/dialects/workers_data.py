"""Seed 003 (comments in Japanese): workers, jobs and data, each addressed by a header.

``X-Data-Id`` names a data object (the main API's /data objects), ``X-Job-Id`` a job,
``X-Worker-Id`` a worker (an execute node of the pool). A job runs
``<runtime> ./<function file> <data1 file>`` on a worker offering the runtime and its
stdout becomes the content of ``data2_id``. HTCondor's matchmaking is the seed's
contract between a job and a worker. Every route calls the one job, data or infra service.
"""

from __future__ import annotations

import dataclasses
import io
import shlex
import tempfile
import threading
import time
import uuid

import falcon

from ..api.bodies import lenient_json_object
from ..api.idempotency import idempotent
from ..api.jobs import submit_job
from ..api.submission import submission_from_json
from ..errors import Busy, BackendRefused, Conflict, GatewayError, Gone, InvalidRequest, NotFound, TooLarge
from ..infra.workers import worker_name
from ..jobs.states import JobState
from . import Dialect, submission_hook

BASE = "/mecrm"

# Core state -> the seed's word. The seed knows Pending, Processing and Finished; a job that
# failed, was removed or that HTCondor refused is Failed (GET /job's `reason` says which).
STATES = {
    JobState.IDLE: "Pending",
    JobState.HELD: "Pending",
    JobState.RUNNING: "Processing",
    JobState.SUSPENDED: "Processing",
    JobState.COMPLETED: "Finished",
    JobState.FAILED: "Failed",
    JobState.SUBMISSION_ERROR: "Failed",
    JobState.REMOVED: "Failed",
}
# The seed's steps, the only ones PUT /job accepts.
STEPS = ("Pending", "Processing", "Finished")
FAILED = "Failed"
MATCHED = (JobState.RUNNING.value, JobState.SUSPENDED.value)

JOB_FIELDS = ("job_id", "data1_id", "data2_id", "function_id", "runtime", "status")
POST_JOB_FIELDS = ("data1_id", "data2_id", "function_id", "runtime")
JOB_EXAMPLE = '{"data1_id": "<id>", "function_id": "<id>", "runtime": "python3"}'
WORKER_EXAMPLE = '{"runtime": ["python3", "bash"]}'
# How long POST /worker waits for the provider's new node to join the pool.
PROVISION_WAIT_SECONDS = 120.0
# Contract waits held at once (each holds one of the server's threads while it waits).
MAX_CONTRACT_WAITS = 2
POLL_SECONDS = 0.5
# The core's field names -> this seed's, for refusals of a POST /job.
FIELD_NAMES = {"binary": "function_id", "input_files": "data1_id", "answer_into": "data2_id",
               "job-runtime": "runtime"}


# --- bodies and headers -------------------------------------------------------------------

def body_object(req: falcon.Request, example: str) -> dict:
    """The JSON body with its keys matched case-insensitively, as the seed's Go server does
    (``Runtime`` and ``runtime`` are one key)."""
    body = lenient_json_object(req, example)
    folded: dict = {}
    for key, value in body.items():
        name = key.lower()
        if name in folded:
            raise InvalidRequest(f"'{key}' is given twice (keys are matched without case)", field=name)
        folded[name] = value
    return folded


def header_id(req: falcon.Request, header: str, what: str, body: dict | None = None, key: str | None = None) -> str:
    """The id a header names (or, for the worker routes, the body's ``key``); a clear 400 when missing."""
    value = (req.get_header(header) or "").strip()
    from_body = body.get(key) if body and key else None
    if from_body is not None and not isinstance(from_body, str):
        raise InvalidRequest(f"{key} must be a string", field=key)
    if value and from_body and from_body != value:
        raise InvalidRequest(f"the {header} header ({value}) and the body's {key} ({from_body}) differ", field=header)
    value = value or from_body or ""
    if not value:
        raise InvalidRequest(f"the {header} header is required: the id of the {what}", field=header)
    return value


def read_one_part(req: falcon.Request, limit: int):
    """The multipart body's one part (any field name), buffered (at most ``limit`` bytes)."""
    content_type = (req.content_type or "").split(";")[0].strip().lower()
    if content_type != falcon.MEDIA_MULTIPART:
        raise InvalidRequest(f"send the data as multipart/form-data (curl -F file=@path); got "
                             f"{req.content_type or 'no Content-Type'}", field="file")
    buffer = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)
    found = None
    try:
        for part in req.get_media():
            if found is not None:
                raise InvalidRequest(f"send one part only; a second part '{part.name}' came after '{found[0]}'",
                                     field=part.name)
            size = 0
            while chunk := part.stream.read(1024 * 1024):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"the data is larger than the {limit}-byte limit", field=part.name, limit=limit)
                buffer.write(chunk)
            found = (part.name, part.content_type)
    except falcon.MediaMalformedError as exc:
        buffer.close()
        raise InvalidRequest(f"the body is not valid multipart/form-data: {exc.description}", field="file") from None
    except BaseException:
        buffer.close()
        raise
    if found is None:
        buffer.close()
        raise InvalidRequest("the form has no part; send the data as -F file=@path", field="file")
    buffer.seek(0)
    return buffer, found[1]


def text_answer(resp: falcon.Response, text: str) -> None:
    resp.content_type = falcon.MEDIA_TEXT
    resp.text = text


# --- data -------------------------------------------------------------------------------------

class DataResource:
    def __init__(self, gateway):
        self.data = gateway.service.data
        self.quota = gateway.quota
        self.max_bytes = gateway.settings.dialect_003_max_data_bytes

    def _limit(self, actor) -> int:
        return min(self.max_bytes, self.quota.limits_for(actor.user)["max_upload_bytes"])

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        actor = req.context.actor
        buffer, content_type = read_one_part(req, self._limit(actor))
        with buffer:
            # The seed's server names the file by its data id.
            row = self.data.create(actor, buffer, filename=None, content_type=content_type,
                                   limit=self._limit(actor), request_id=req.context.request_id)
        text_answer(resp, row["id"])

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        row = self.data.get(req.context.actor, header_id(req, "X-Data-Id", "data object"))
        boundary = uuid.uuid4().hex
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{row['id']}\"\r\n"
                f"Content-Type: {row['content_type']}\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        fh = open(row["path"], "rb")
        resp.content_type = f"multipart/form-data; boundary={boundary}"
        resp.content_length = len(head) + row["size"] + len(tail)
        resp.stream = _chunks(head, fh, tail)

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        actor = req.context.actor
        data_id = header_id(req, "X-Data-Id", "data object")
        self.data.get(actor, data_id)  # an unknown id is refused before the body is read
        buffer, content_type = read_one_part(req, self._limit(actor))
        with buffer:
            row = self.data.replace(actor, data_id, buffer, if_match=None, content_type=content_type,
                                    filename=None, limit=self._limit(actor), request_id=req.context.request_id)
        text_answer(resp, row["id"])

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.data.delete(req.context.actor, header_id(req, "X-Data-Id", "data object"), req.context.request_id)
        resp.status = falcon.HTTP_204


def _chunks(head: bytes, fh, tail: bytes):
    try:
        yield head
        while chunk := fh.read(1024 * 1024):
            yield chunk
        yield tail
    finally:
        fh.close()


class DataRegResource:
    """An empty data object: an output slot a job's data2_id can name."""

    def __init__(self, gateway):
        self.data = gateway.service.data

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        row = self.data.create(req.context.actor, io.BytesIO(b""), filename=None, content_type="text/plain",
                               request_id=req.context.request_id)
        text_answer(resp, row["id"])


# --- jobs ---------------------------------------------------------------------------------------

def job_view(job: dict, refs: dict) -> dict:
    state = JobState(job["state"])
    return {
        "job_id": job["id"],
        "data1_id": (refs.get("input_file") or [None])[0],
        "data2_id": job["answer_into"],
        "function_id": (refs.get("binary") or [None])[0],
        "runtime": job["runtime"],
        "status": STATES[state],
        "reason": job.get("state_reason"),
    }


def post_job_body(body: dict) -> dict:
    unknown = sorted(set(body) - set(POST_JOB_FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field '{unknown[0]}'; POST /job takes {', '.join(POST_JOB_FIELDS)}",
                             field=unknown[0])
    for key in POST_JOB_FIELDS:
        if body.get(key) is not None and not isinstance(body[key], str):
            raise InvalidRequest(f"{key} must be a string", field=key)
    for key in ("function_id", "runtime"):
        if not body.get(key):
            raise InvalidRequest(f"{key} is required, e.g. {JOB_EXAMPLE}", field=key)
    if body.get("data1_id") and body["data1_id"] == body["function_id"]:
        raise InvalidRequest("data1_id and function_id name the same object; the function reads its data from "
                             "another one", field="data1_id")
    return {key: body.get(key) or None for key in POST_JOB_FIELDS}


class JobResource:
    def __init__(self, gateway):
        self.service = gateway.service
        self.submission = gateway.submission
        self.data = gateway.service.data
        self.quota = gateway.quota
        self.store = gateway.store
        self.on_submitted = submission_hook(gateway)

    def _job(self, req: falcon.Request) -> dict:
        job_id = header_id(req, "X-Job-Id", "job")
        job = self.service.get(job_id, req.context.actor)
        if not job.get("answer_into"):
            raise NotFound(f"job {job_id} was not posted through {BASE}/job; GET /jobs/{job_id} shows it")
        return job

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        job = self._job(req)
        resp.media = job_view(job, self.store.job_data_refs(job["id"]))

    @idempotent
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        actor = req.context.actor
        fields = post_job_body(body_object(req, JOB_EXAMPLE))
        function = self._data_for(actor, fields["function_id"], "function_id")
        data1 = self._data_for(actor, fields["data1_id"], "data1_id") if fields["data1_id"] else None
        registered = None
        words = [fields["runtime"], "./" + function["filename"]] + (["./" + data1["filename"]] if data1 else [])
        json_body = {"name": f"mecrm-{fields['runtime']}", "command": shlex.join(words),
                     "binary": function["id"], "runtime": fields["runtime"],
                     "input_files": [data1["id"]] if data1 else []}

        def parse(staging):
            nonlocal registered
            answer_into = fields["data2_id"]
            if not answer_into:  # the seed's server registers the output slot itself
                registered = self.data.create(actor, io.BytesIO(b""), filename=None, content_type="text/plain",
                                              request_id=req.context.request_id)
                answer_into = registered["id"]
            return dataclasses.replace(submission_from_json(json_body, actor, req.context.request_id),
                                       answer_into=answer_into)

        try:
            # Registered in parse: a retry whose jobs exist already (Idempotency-Key) registers none.
            _, created = submit_job(self.submission, self.quota, actor, parse, self.on_submitted)
        except GatewayError as exc:
            if registered:
                self.data.delete(actor, registered["id"])
            raise _in_seed_words(exc, fields["runtime"]) from None
        except BaseException:
            if registered:
                self.data.delete(actor, registered["id"])
            raise
        resp.location = f"{BASE}/job"
        resp.media = {"job_id": created["id"]}

    def _data_for(self, actor, data_id: str, field: str) -> dict:
        try:
            return self.data.for_job(actor, data_id, field)
        except (NotFound, Gone) as exc:  # an id in the body, not the address: the request is wrong
            raise InvalidRequest(exc.message, field=field) from None

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = body_object(req, '{"status": "Processing"}')
        job = self._job(req)
        unknown = sorted(set(body) - set(JOB_FIELDS))
        if unknown:
            raise InvalidRequest(f"unknown field '{unknown[0]}'; PUT /job takes {', '.join(JOB_FIELDS)}",
                                 field=unknown[0])
        status = body.get("status")
        if status not in STEPS:
            refusal = (f"{FAILED} is HTCondor's to set, not a client's" if status == FAILED
                       else f"unknown status {status!r}" if status is not None else "status is required")
            raise InvalidRequest(f"{refusal}; PUT takes one of {', '.join(STEPS)}", field="status")
        current = job_view(job, self.store.job_data_refs(job["id"]))
        for key in ("job_id", "data1_id", "data2_id", "function_id", "runtime"):
            if key in body and body[key] != current[key]:
                raise Conflict(f"{key} is fixed when the job is posted (it is {current[key]!r}); "
                               "only status can be PUT", field=key)
        before = current["status"]
        self.service.refresh([job])  # what the schedd says now
        now = STATES[JobState(self.service.get(job["id"], req.context.actor)["state"])]
        if before == FAILED:
            raise Conflict(f"job {job['id']} is {FAILED} ({job.get('state_reason') or 'it ended'}); it takes no step",
                           status=before)
        step = STEPS.index(status) - STEPS.index(before)
        if step not in (0, 1):
            raise Conflict(f"{before} -> {status} is not a step of the job's life; the steps are "
                           f"{' -> '.join(STEPS)}, one at a time", status=before)
        if now != status:
            raise Conflict(f"HTCondor reports job {job['id']} as {now}, not {status}: the schedd decides when a "
                           "job is matched and when it ends, a PUT can only agree with it", status=now)
        resp.status = falcon.HTTP_204

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        job = self._job(req)
        self.service.delete(job["id"], req.context.actor, req.context.request_id)
        resp.status = falcon.HTTP_204


def _in_seed_words(exc: GatewayError, runtime: str) -> GatewayError:
    """A core refusal with this seed's field names (binary -> function_id, ...)."""
    field = exc.details.get("field")
    if field not in FIELD_NAMES:
        return exc
    name = FIELD_NAMES[field]
    message = exc.message.replace(f"{field}: ", f"{name}: ", 1)
    if field == "job-runtime":
        available = exc.details.get("available")
        if available is not None:
            message = (f"no worker offers runtime '{runtime}'; workers offer: {', '.join(available) or 'none'} "
                       f"(an admin adds one with POST {BASE}/worker)")
        else:
            message = message.replace("job-runtime", "runtime")
    details = {**exc.details, "field": name}
    if isinstance(exc, (NotFound, Gone)):  # an id in the body, not the address: the request is wrong
        return InvalidRequest(message, **details)
    return type(exc)(message, **details)


# --- workers ----------------------------------------------------------------------------------------

class WorkerResource:
    def __init__(self, gateway):
        self.infra = gateway.infra

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        actor = req.context.actor
        actor.require_admin("adding workers")
        body = body_object(req, WORKER_EXAMPLE)
        unknown = sorted(set(body) - {"runtime"})
        if unknown:
            raise InvalidRequest(f"unknown field '{unknown[0]}'; POST /worker takes runtime, e.g. {WORKER_EXAMPLE}",
                                 field=unknown[0])
        runtimes = body.get("runtime")
        if not isinstance(runtimes, list) or not runtimes or not all(isinstance(r, str) for r in runtimes):
            raise InvalidRequest(f"runtime is required: the runtimes the worker offers, e.g. {WORKER_EXAMPLE}",
                                 field="runtime")
        provider = "local" if "local" in self.infra.providers else next(iter(self.infra.providers), "local")
        record = self.infra.provision(actor, provider, {"runtimes": runtimes}, req.context.request_id)
        deadline = time.monotonic() + PROVISION_WAIT_SECONDS
        while record["status"] == "running" and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            record = self.infra.request(actor, record["id"])
        if record["status"] == "failed":
            raise BackendRefused(f"the worker could not be added: {record.get('error')}", request_id=record["id"])
        if record["status"] == "running":
            resp.status = falcon.HTTP_202
            resp.media = {"worker_id": None, "request_id": record["id"], "status": "running",
                          "poll": "/workers/requests"}
            return
        resp.media = {"worker_id": record["worker"]}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        worker = self.infra.worker(req.context.actor, self._id(req))
        resp.media = {"worker_id": worker["name"], "runtime": worker["runtimes"]}

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.infra.retire(req.context.actor, self._id(req), req.context.request_id)
        resp.status = falcon.HTTP_204

    @staticmethod
    def _id(req: falcon.Request) -> str:
        return header_id(req, "X-Worker-Id", "worker", body_object(req, '{"worker_id": "<id>"}'), "worker_id")


class ContractResource:
    """Waits (bounded) until HTCondor has matched a job of this door to the worker."""

    def __init__(self, gateway):
        self.infra = gateway.infra
        self.store = gateway.store
        self.wait_seconds = gateway.settings.dialect_003_contract_wait_seconds
        self._waits = threading.BoundedSemaphore(MAX_CONTRACT_WAITS)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        actor = req.context.actor
        worker_id = WorkerResource._id(req)
        self.infra.worker(actor, worker_id)  # admins only; an unknown worker is 404
        if not self._waits.acquire(blocking=False):
            raise Busy(f"{MAX_CONTRACT_WAITS} contract waits are open already; retry shortly")
        try:
            deadline = time.monotonic() + self.wait_seconds
            while True:
                job = self._matched(worker_id, actor)
                if job is not None:
                    view = job_view(job, self.store.job_data_refs(job["id"]))
                    resp.media = {"worker_id": worker_id, "job_id": job["id"], "data1_id": view["data1_id"],
                                  "data2_id": view["data2_id"], "function_id": view["function_id"],
                                  "runtime": view["runtime"]}
                    return
                if time.monotonic() >= deadline:
                    break
                time.sleep(POLL_SECONDS)
        finally:
            self._waits.release()
        resp.status = falcon.HTTP_204

    def _matched(self, worker_id: str, actor):
        for job in self.store.jobs_answering_into(MATCHED):
            if job.get("remote_host") and worker_name(job["remote_host"]) == worker_id and actor.may_see(job["owner"]):
                return job
        return None


def register(app, gateway) -> None:
    app.add_route(f"{BASE}/data", DataResource(gateway))
    app.add_route(f"{BASE}/data/reg", DataRegResource(gateway))
    app.add_route(f"{BASE}/job", JobResource(gateway))
    app.add_route(f"{BASE}/worker", WorkerResource(gateway))
    app.add_route(f"{BASE}/worker/contract", ContractResource(gateway))


DIALECT = Dialect(
    name="Workers, jobs and data",
    seed="003",
    base=BASE,
    docs="docs/dialect-003-workers-data.md",
    register=register,
    states=STATES,
    openapi="workers_data.openapi.json",
)
