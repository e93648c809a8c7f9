"""GA4GH Task Execution Service (TES) 1.1 at /ga4gh/tes/v1: a task is one gateway job.

The request is checked and its executors rendered into run.sh by ``tes_task.py``; the job
goes through ``submit_job`` like every other door's. The TES request itself (name, tags,
executors, inputs) is kept in the store beside the job, to answer GET with. Answers carry
only the fields the TES 1.1 schema defines (clients such as py-tes refuse any other key).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import falcon

from .. import __version__
from ..api.bodies import json_object
from ..api.idempotency import idempotent
from ..api.jobs import submit_job
from ..api.submission import submission_from_json
from ..errors import Conflict, InvalidRequest, NotFound
from ..jobs import bundles
from ..jobs.service import ARTIFACT_FILES
from ..jobs.states import TRANSFERRING_INPUT, JobAction, JobState
from ..store import JobFilter
from . import Dialect, submission_hook
from . import tes_task

log = logging.getLogger(__name__)

BASE = "/ga4gh/tes/v1"
DOCS = "docs/dialect-tes.md"

# HTCondor's hold reason when it could not fetch an input (an http(s) URL among them).
TRANSFER_FAILED = "transfer input files failure"

# The facts a task's state turns on besides its job's state. The store has each as SQL
# (store.TES_CONDITIONS), so that a state filter lists exactly the tasks that read so.
CONDITIONS = {
    # JobStatus 2 while the worker still fetches the input files (condor_q's "<").
    "transferring_input": lambda job, task: job.get("backend_status") == TRANSFERRING_INPUT,
    # Held because an input could not be fetched: it stays held until released or canceled.
    "input_unfetchable": lambda job, task: TRANSFER_FAILED in (job.get("state_reason") or "").lower(),
    # The job completed; the gateway has not delivered the task's outputs yet.
    "outputs_pending": lambda job, task: bool(task.get("_outputs")) and task.get("_delivery") is None,
    "outputs_failed": lambda job, task: bool((task.get("_delivery") or {}).get("error")),
    # Removed, and still in the schedd's queue while its worker stops it.
    "in_queue": lambda job, task: job.get("left_queue_at") is None,
}

# The one state table: a task is in the TES state of the first row whose core state is its
# job's and whose condition (None: none) holds. Held (by a user or by HTCondor: system_logs
# say which and why) and suspended jobs are PAUSED; HTCondor refusing or losing the job, an
# input it could not fetch, or outputs the gateway could not deliver are a SYSTEM_ERROR.
STATE_TABLE = (
    (JobState.IDLE, None, "QUEUED"),
    (JobState.RUNNING, "transferring_input", "INITIALIZING"),
    (JobState.RUNNING, None, "RUNNING"),
    (JobState.SUSPENDED, None, "PAUSED"),
    (JobState.HELD, "input_unfetchable", "SYSTEM_ERROR"),
    (JobState.HELD, None, "PAUSED"),
    (JobState.COMPLETED, "outputs_pending", "RUNNING"),
    (JobState.COMPLETED, "outputs_failed", "SYSTEM_ERROR"),
    (JobState.COMPLETED, None, "COMPLETE"),
    (JobState.FAILED, None, "EXECUTOR_ERROR"),
    (JobState.SUBMISSION_ERROR, None, "SYSTEM_ERROR"),
    (JobState.REMOVED, "in_queue", "CANCELING"),
    (JobState.REMOVED, None, "CANCELED"),
)
# Each core state's word when no condition holds (the dialects' common seam).
STATES = {state: word for state, condition, word in STATE_TABLE if condition is None}
TES_STATES = tes_task.TASK_STATES
# TES words no row has: a state filter with them matches no task.
UNUSED_STATES = tuple(w for w in TES_STATES if w not in {word for _, _, word in STATE_TABLE})
VIEWS = ("MINIMAL", "BASIC", "FULL")
DEFAULT_PAGE = 256
MAX_PAGE = 2047  # "must be less than 2048"
LIST_PARAMS = ("view", "page_size", "page_token", "name_prefix", "state", "tag_key", "tag_value")

IMAGE_NOTE = ("The pool has no container runtime: an executor's image is recorded and returned but not pulled, "
              "and not matched to the runtimes the workers advertise; its command runs on the worker's own "
              "operating system, in a folder of the job's working directory that holds every path the task "
              "declares (resources.backend_parameters.runtime asks for a worker offering a runtime).")


def service_info(folders: tuple[Path, ...] = ()) -> dict[str, Any]:
    return {
        "id": "org.modaclouds.batch.tes",
        "name": "modaclouds-batch TES",
        "type": {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"},
        "description": "GA4GH TES 1.1 over an HTCondor pool (one task = one HTCondor job). " + IMAGE_NOTE +
                       " Inputs: inline content, http(s) URLs (fetched by HTCondor on the execute node) and file:// "
                       "URLs; outputs: file:// URLs and http(s) URLs (PUT by the gateway); file:// only in the folders "
                       "listed in storage.",
        "organization": {"name": "MODAClouds", "url": "https://github.com/modaclouds"},
        "environment": "production",
        "version": __version__,
        "storage": [folder.as_uri() for folder in folders],
        "tesResources_backend_parameters": sorted(tes_task.BACKEND_PARAMETERS),
    }


def refuse_blank(req: falcon.Request, names: tuple[str, ...]) -> None:
    """``?state=`` names no state (falcon drops blank values, which would make it no filter)."""
    blank = falcon.uri.parse_query_string(req.query_string, keep_blank=True)
    for name in names:
        values = blank.get(name)
        if values is not None and "" in (values if isinstance(values, list) else [values]):
            raise InvalidRequest(f"{name} is empty; leave it out or give a value", field=name)


def view_param(req: falcon.Request) -> str:
    refuse_blank(req, ("view",))
    view = (req.get_param("view") or "MINIMAL").upper()
    if view not in VIEWS:
        raise InvalidRequest(f"view is one of {', '.join(VIEWS)}", field="view")
    return view


def _executor_count(task: dict) -> int:
    return len(task.get("executors") or [])


def tes_state(job: dict, task: dict) -> str:
    state = JobState(job["state"])
    for row_state, condition, word in STATE_TABLE:
        if row_state is state and (condition is None or CONDITIONS[condition](job, task)):
            return word
    raise ValueError(f"no TES state for a {state.value} job")  # STATE_TABLE ends each state with None


def state_cases(word: str) -> tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]:
    """The table's rows for ``word`` as store filter cases: (job state, the condition that
    holds, the conditions of the same state's earlier rows, which must not)."""
    cases = []
    for state in JobState:
        earlier: list[str] = []
        for row_state, condition, row_word in STATE_TABLE:
            if row_state is not state:
                continue
            if row_word == word:
                cases.append((state.value, (condition,) if condition else (), tuple(earlier)))
            if condition is None:
                break
            earlier.append(condition)
    return tuple(cases)


# One delivery at a time in this process, whichever Deliveries makes it (an app built twice
# on one gateway has two): a task's files are never written or PUT twice at once.
_DELIVERING = threading.Lock()


class Deliveries:
    """Each completed task's outputs, delivered once, on a thread of their own, as soon as the
    tracker reports its job ended (a task reads RUNNING until then, COMPLETE or SYSTEM_ERROR
    after). What is owed is the store's: a task with outputs and no delivery record, so a
    delivery a stop interrupted is made after the restart (the tracker's first cycle wakes us)."""

    def __init__(self, gateway):
        self.store = gateway.store
        self.folders = gateway.settings.tes_folders
        self.allow_private = gateway.settings.private_webhooks_allowed
        self._lock = threading.Lock()
        self._wanted = False
        self._worker: threading.Thread | None = None

    def jobs_ended(self, job_ids: list[str]) -> None:
        """The service's end listener: quick, on the tracker's thread."""
        if job_ids and not self.store.tes_tasks(job_ids):
            return  # none of them is a task
        with self._lock:
            self._wanted = True
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="tes-deliveries", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._wanted:
                    self._worker = None
                    return
                self._wanted = False
            try:
                self.deliver_owed()
            except Exception:  # e.g. the store closed under us at shutdown: owed still, done after restart
                log.exception("TES output delivery stopped; what is left is delivered when a job next ends")

    def deliver_owed(self) -> None:
        with _DELIVERING:
            for job_id in self.store.tes_tasks_awaiting_delivery(JobState.COMPLETED.value):
                self._deliver(job_id)

    def _deliver(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        task = self.store.tes_tasks([job_id]).get(job_id)
        if job is None or task is None:  # deleted meanwhile
            return
        if job.get("outputs_retrieved_at"):
            archive = Path(job["job_dir"]) / ARTIFACT_FILES["output"]
            delivery = tes_task.deliver_outputs(archive, task["_outputs"], self.folders, self.allow_private)
        else:
            delivery = {"files": [], "error": "HTCondor did not give back the job's outputs: "
                                              f"{job.get('state_reason') or 'unknown reason'}"}
        if delivery["error"]:
            log.warning("task %s: outputs not delivered: %s", job_id, delivery["error"])
        self.store.set_tes_delivery(job_id, delivery)


def task_view(job: dict, task: dict, view: str) -> dict[str, Any]:
    """A tesTask in ``view``: only the fields TES 1.1 defines, none of them null."""
    answer: dict[str, Any] = {"id": job["id"], "state": tes_state(job, task)}
    if view == "MINIMAL":
        return answer
    full = view == "FULL"
    for key in ("name", "description", "outputs", "volumes", "tags"):
        if task.get(key) is not None:
            answer[key] = task[key]
    if task.get("inputs") is not None:
        answer["inputs"] = [item if full else {k: v for k, v in item.items() if k != "content"}
                            for item in task["inputs"]]
    resources = tes_task.kept_resources(task.get("resources"))
    if resources is not None:
        answer["resources"] = resources
    answer["executors"] = task.get("executors") or []
    answer["creation_time"] = job["created_at"]
    answer["logs"] = [task_log(job, task, full)]
    return answer


def task_log(job: dict, task: dict, full: bool) -> dict[str, Any]:
    """The one tesTaskLog (present even before the task runs): executor logs once it ended."""
    executors = _executor_count(task)
    delivery = task.get("_delivery") or {}
    log: dict[str, Any] = {"logs": [], "outputs": delivery.get("files") or []}
    state = JobState(job["state"])
    output = Path(job["job_dir"]) / ARTIFACT_FILES["output"] if job.get("job_dir") else None
    if output and job.get("outputs_retrieved_at") and output.is_file():
        log["logs"] = tes_task.executor_logs(output, executors, full)
    if job.get("started_at"):
        log["start_time"] = job["started_at"]
    if job.get("completed_at"):
        log["end_time"] = job["completed_at"]
    metadata = {"gateway_state": state.value}
    if job.get("backend_status"):
        metadata["htcondor_status"] = str(job["backend_status"])
    if job.get("cluster_id") is not None:
        metadata["htcondor_job"] = f"{job['cluster_id']}.{job.get('proc_id') or 0}"
    if job.get("remote_host"):
        metadata["host"] = str(job["remote_host"])
    log["metadata"] = metadata
    if full:
        log["system_logs"] = system_logs(job, task)
        if delivery.get("error"):
            log["system_logs"].append(f"outputs not delivered: {delivery['error']}")
    return log


def system_logs(job: dict, task: dict) -> list[str]:
    state = JobState(job["state"])
    lines = [f"gateway job {job['id']} is {state.value}"]
    if state is JobState.RUNNING and CONDITIONS["transferring_input"](job, task):
        lines.append("INITIALIZING because HTCondor is still fetching the task's input files onto its worker")
    elif state is JobState.COMPLETED and CONDITIONS["outputs_pending"](job, task):
        lines.append("RUNNING until the gateway has delivered the task's outputs (the job itself completed)")
    elif state is JobState.REMOVED and CONDITIONS["in_queue"](job, task):
        lines.append("CANCELING because HTCondor is still stopping the job on its worker")
    elif state is JobState.HELD and CONDITIONS["input_unfetchable"](job, task):
        lines.append("SYSTEM_ERROR because HTCondor could not fetch an input; the job stays held "
                     "(cancel removes it, POST /jobs/{id}/release retries)")
    elif state is JobState.HELD:
        lines.append("PAUSED because HTCondor holds the job (a hold action or HTCondor itself; release requeues it)")
    elif state is JobState.SUSPENDED:
        lines.append("PAUSED because the job is suspended on its worker (continue resumes it)")
    if job.get("state_reason"):
        lines.append(f"reason: {job['state_reason']}")
    if job.get("exit_status") is not None:
        lines.append(f"run.sh exit status: {job['exit_status']}")
    return lines


class ServiceInfoResource:
    def __init__(self, gateway):
        self.folders = gateway.settings.tes_folders

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = service_info(self.folders)


class TasksResource:
    def __init__(self, gateway):
        self.service = gateway.service
        self.submission = gateway.submission
        self.store = gateway.store
        self.quota = gateway.quota
        self.folders = gateway.settings.tes_folders
        self.allow_private = gateway.settings.private_webhooks_allowed
        self.on_submitted = submission_hook(gateway)

    @idempotent
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        actor = req.context.actor
        task = tes_task.parse_task(json_object(req), self.folders, self.allow_private)

        def parse(staging):
            request = submission_from_json(task.job_fields, actor, req.context.request_id)
            request.url_inputs = task.url_inputs
            bundles.write_files_bundle(task.script, task.files, staging.bundle_path)
            staging.has_bundle = True
            for member, source in task.file_inputs:
                staging.add_tree_copy(source, member)
            return request

        _, created = submit_job(self.submission, self.quota, actor, parse, self.on_submitted)
        body = dict(task.body)
        if "resources" in body:
            body["resources"] = tes_task.kept_resources(body["resources"])
        if task.outputs:
            body["_outputs"] = task.outputs
        try:
            # A retry under an Idempotency-Key whose answer was lost may find the task recorded.
            if created["id"] not in self.store.tes_tasks([created["id"]]):
                self.store.add_tes_task(created["id"], task.body.get("name"), task.body.get("tags") or {}, body)
        except Exception:
            self.service.delete(created["id"], actor, req.context.request_id)
            raise
        resp.media = {"id": created["id"]}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        unknown = sorted(set(req.params) - set(LIST_PARAMS))
        if unknown:
            raise InvalidRequest(f"unknown parameter '{unknown[0]}'; ListTasks takes {', '.join(LIST_PARAMS)}",
                                 field=unknown[0])
        refuse_blank(req, ("state", "page_size"))
        view = view_param(req)
        size = req.get_param_as_int("page_size", min_value=1, max_value=MAX_PAGE, default=DEFAULT_PAGE)
        word = req.get_param("state")
        if word and word not in TES_STATES:
            raise InvalidRequest(f"unknown state {word}; the states are {', '.join(TES_STATES)}", field="state")
        cases = state_cases(word) if word else ()
        keys = req.get_param_as_list("tag_key") or []
        values = req.get_param_as_list("tag_value") or []
        if len(values) > len(keys):
            raise InvalidRequest("each tag_value goes with a tag_key before it", field="tag_value")
        tags = tuple((key, values[i] if i < len(values) else "") for i, key in enumerate(keys))
        if word and not cases:
            resp.media = {"tasks": []}
            return
        flt = JobFilter(tes_state_cases=cases, tes_only=True, tes_name_prefix=req.get_param("name_prefix") or None,
                        tes_tags=tags)
        rows, next_cursor, _ = self.service.list(req.context.actor, flt, size, req.get_param("page_token"))
        ids = [row["id"] for row in rows]
        jobs, tasks = self.store.jobs_by_id(ids), self.store.tes_tasks(ids)
        resp.media = {"tasks": [task_view(jobs[i], tasks.get(i, {}), view) for i in ids if i in jobs]}
        if next_cursor:
            resp.media["next_page_token"] = next_cursor


def _task(service, store, job_id: str, actor) -> tuple[dict, dict]:
    try:
        job = service.get(job_id, actor)
    except InvalidRequest:  # not a job id at all: no such task either
        raise NotFound(f"no task with id {job_id}; GET {BASE}/tasks lists your tasks") from None
    task = store.tes_tasks([job["id"]]).get(job["id"])
    if task is None:  # a job from another door is no TES task
        raise NotFound(f"no task with id {job_id}; GET {BASE}/tasks lists your tasks")
    return job, task


class TaskResource:
    def __init__(self, gateway):
        self.service = gateway.service
        self.store = gateway.store

    def on_get(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        view = view_param(req)
        job, task = _task(self.service, self.store, task_id, req.context.actor)
        resp.media = task_view(job, task, view)


class CancelResource:
    def __init__(self, gateway):
        self.service = gateway.service
        self.store = gateway.store

    def on_post(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        actor = req.context.actor
        job, task = _task(self.service, self.store, task_id, actor)
        state = JobState(job["state"])
        if state is JobState.REMOVED:
            resp.media = {}
            return
        if state.is_final:
            word = tes_state(job, task)
            raise Conflict(f"task {job['id']} is already {word}; only unfinished tasks can be canceled", state=word)
        self.service.act(job["id"], JobAction.REMOVE.value, actor, req.context.request_id)
        resp.media = {}


class LineBreakInCancelPath:
    """falcon matches ``{task_id}:cancel`` with ``.+``, which stops at a line break, and would
    route ``POST /tasks/a%0Ab:cancel`` to GET-only ``/tasks/{task_id}`` (a 405): no task has
    such an id, so it is a 404 before routing."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path.startswith(f"{BASE}/tasks/") and req.path.endswith(":cancel") and "\n" in req.path:
            raise NotFound(f"no task with that id; GET {BASE}/tasks lists your tasks")


def register(app, gateway) -> None:
    app.add_middleware(LineBreakInCancelPath())
    app.add_route(f"{BASE}/service-info", ServiceInfoResource(gateway))
    gateway.ends.on_jobs_ended(Deliveries(gateway).jobs_ended)
    app.add_route(f"{BASE}/tasks", TasksResource(gateway))
    app.add_route(f"{BASE}/tasks/{{task_id}}", TaskResource(gateway))
    app.add_route(f"{BASE}/tasks/{{task_id}}:cancel", CancelResource(gateway))


DIALECT = Dialect(
    name="GA4GH Task Execution Service 1.1",
    seed="tes",
    base=BASE,
    docs=DOCS,
    register=register,
    states=STATES,
    openapi="tes.openapi.json",
)
