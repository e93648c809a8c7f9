"""Submission: a job's sources staged and checked, its items prepared, queued as one cluster, recorded.

All or nothing: either the job (or array) is queued and recorded, or no row, folder, charge
or cluster is left. Also settles what a stopped process was submitting under an idempotency
key. Knows jobs, the store and the condor adapter; knows nothing of HTTP.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
import logging
import os
import re
import shlex
import shutil
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, ContextManager, Iterator

from ..condor import submit_description as sd
from ..condor.job_ad import ID_PROJECTION, JobAd
from ..condor.schedd import CondorClient, CondorRefused, CondorUnavailable
from ..notify import targets
from ..access.audit import AuditLog
from ..access.identity import Actor
from ..data.service import MAX_TTL_SECONDS, DataService, link_or_copy, receive_stream
from ..home import make_private_dir, mark_job_dir, private_dir, restrict_tree, write_private
from ..errors import BackendRefused, BackendUnavailable, Conflict, Forbidden, InvalidRequest, TooLarge
from ..settings import Settings
from ..store import KeyedSubmission, Store
from ..timefmt import now_iso, to_iso
from . import bundles, dependencies, resources
from .in_flight import InFlight
from .service import JobService, check_job_id
from .validation_pool import ValidationPool
from .states import ACTIVE_STATES, JobState

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 200
MAX_SCRIPT_BYTES = 1024 * 1024
COPY_CHUNK = 1024 * 1024


def url_input_name(url: str) -> str | None:
    """The sandbox name an http(s) input URL lands under, or None if the gateway cannot send it."""
    return sd.url_input_name(url)


@dataclass(frozen=True)
class Waits:
    """What a submission waits for: (named id, mode) edges, whether its gate starts closed
    (some named job has not ended yet), and the state_reason that says so."""

    edges: list[tuple[str, str]] = field(default_factory=list)
    waiting: bool = False
    reason: str | None = None


# A plain-text job-bundle that is only an archive's name: curl's -F without the @.
_LOOKS_LIKE_A_FILE_NAME = re.compile(r"^\s*[^\s'\"]+\.(?:tar\.gz|tgz|zip|tar)\s*$", re.IGNORECASE)


@dataclass
class SubmitRequest:
    actor: Actor
    name: str | None = None
    arguments: str | list[str] | None = None
    notification_url: str | None = None
    notification_events: str = "final"
    request_id: str | None = None
    # Sources other than uploads: data objects, or a command line (seed 001).
    bundle_id: str | None = None
    input_ids: list[str] = field(default_factory=list)
    command: str | None = None
    binary_id: str | None = None
    input_file_ids: list[str] = field(default_factory=list)
    ttl: int | None = None
    # A runtime some worker must offer (GatewayRuntimes); with runtime_wait, queue anyway.
    runtime: str | None = None
    runtime_wait: bool = False
    # What one item asks of its worker, as the user typed it (see jobs/resources.py);
    # with resources_wait, a request no worker can satisfy today is queued anyway.
    cpus: Any = None
    memory: Any = None
    disk: Any = None
    time_limit: Any = None
    resources_wait: bool = False
    # An array: one item per argument set, or ``count`` items with the same arguments.
    array: list[str | list[str]] | None = None
    count: int | None = None
    # An existing data object of the caller that receives the answer (seed 003's data2_id).
    answer_into: str | None = None
    # http(s) URLs HTCondor fetches on the execute node into the job's sandbox (by their
    # last path segment), e.g. a TES task's URL inputs.
    url_inputs: tuple[str, ...] = ()
    # The client's Idempotency-Key (already claimed for ``actor``): tied to the job ids
    # before the schedd submit, so a restart can find the jobs it named (recover_keyed_submissions).
    idempotency_key: str | None = None
    # Jobs (or arrays) this one waits for: each must complete (after), or only end (after_any).
    after: list[str] = field(default_factory=list)
    after_any: list[str] = field(default_factory=list)

    @property
    def item_count(self) -> int:
        if self.array is not None:
            return len(self.array)
        return self.count or 1

    @property
    def is_array(self) -> bool:
        return self.array is not None or self.count is not None


@dataclass
class Staging:
    """The uploads' folder; a single job's own folder. Removed unless the job gets queued."""

    job_id: str
    path: Path
    max_upload_bytes: int
    bundle_filename: str | None = None
    has_bundle: bool = False
    has_input: bool = False
    extra_inputs: list[str] = field(default_factory=list)
    has_files: bool = False
    copied_bytes: int = 0
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
        try:
            receive_stream(stream, target, self.max_upload_bytes, field_name)
        except TooLarge as exc:
            raise TooLarge(exc.message, field=field_name, limit=self.max_upload_bytes) from None

    def receive_script(self, script: str) -> None:
        """The seed's form: the text of one script, which becomes run.sh."""
        if len(script.encode()) > MAX_SCRIPT_BYTES:
            raise TooLarge(f"job-bundle script is larger than {MAX_SCRIPT_BYTES} bytes", field="job-bundle")
        if _LOOKS_LIKE_A_FILE_NAME.match(script):
            name = script.strip()
            raise InvalidRequest(
                f"job-bundle is the text {name!r}, not a file: did you mean -F job-bundle=@{name} "
                "(with the @, curl sends the file's contents)?", field="job-bundle")
        bundles.write_script_bundle(script, self.bundle_path)
        self.has_bundle = True

    def add_input_link(self, src: Path) -> None:
        """A data object as one more input archive (the first one is input.tar.gz)."""
        if not self.has_input:
            link_or_copy(src, self.input_path)
            self.has_input = True
            return
        name = f"input-{len(self.extra_inputs) + 1}.tar.gz"
        link_or_copy(src, self.path / name)
        self.extra_inputs.append(name)

    def add_file_link(self, src: Path, filename: str, executable: bool, field_name: str) -> None:
        """A data object placed, by its file name, in the job's working directory."""
        folder = private_dir(self.path / sd.FILES_DIR)
        dest = folder / filename
        if dest.exists() or filename in (bundles.RUN_SH,):
            raise InvalidRequest(f"{field_name}: two files named {filename!r} would land in the job's working directory",
                                 field=field_name)
        shutil.copyfile(src, dest) if executable else link_or_copy(src, dest)
        # Private like every file of the job folder; the launcher copies it into work/.
        dest.chmod(0o700 if executable else 0o600)
        self.has_files = True

    def input_bytes(self) -> int:
        """Bytes of the files HTCondor will transfer (and spool) for one job."""
        total = 0
        for name in self.sources():
            path = self.path / name
            paths = path.rglob("*") if path.is_dir() else [path]
            total += sum(p.stat().st_size for p in paths if p.is_file())
        return total
    def add_tree_copy(self, src: Path, relative: str) -> int:
        """A file, or a folder's files, copied (never linked: the source keeps its modes) to
        ``relative`` in the job's working directory; returns the bytes copied.

        Symbolic links are not followed. Refused past the upload limit, with what was given before."""
        folder = private_dir(self.path / sd.FILES_DIR)
        dest = folder / relative
        sources = [(src, dest)] if src.is_file() else [
            (Path(root) / name, dest / Path(root).relative_to(src) / name)
            for root, _, names in os.walk(src) for name in names]
        if src.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        copied = 0
        for source, target in sources:
            if source.is_symlink() or not source.is_file():
                continue
            copied += source.stat().st_size
            self.copied_bytes += source.stat().st_size
            if self.copied_bytes > self.max_upload_bytes:
                raise TooLarge(f"the job's input files are larger than {self.max_upload_bytes} bytes",
                               limit=self.max_upload_bytes)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            target.chmod(0o600)
        self.has_files = True
        return copied

    def sources(self) -> list[str]:
        """The files HTCondor transfers besides arguments.sh, in the order the launcher uses them."""
        names = [sd.BUNDLE_FILE]
        if self.has_input:
            names.append(sd.INPUT_FILE)
        names += self.extra_inputs
        if self.has_files:
            names.append(sd.FILES_DIR)
        return names


class JobSubmission:
    """Turns a staged submission into queued, recorded jobs (``staging`` then ``submit``)."""

    def __init__(self, settings: Settings, store: Store, condor: CondorClient, audit: AuditLog, data: DataService,
                 jobs: JobService, in_flight: InFlight,
                 runtimes: Callable[[], set[str]] | None = None,
                 offers: Callable[[], list[dict[str, int]]] | None = None,
                 reserve: Callable[[Actor, int, int], ContextManager[str | None]] | None = None):
        self.runtimes = runtimes
        # Holds a submission's place (jobs, spool bytes) against its owner's limits (QuotaService.reserve).
        self.reserve = reserve or (lambda actor, jobs, spool_bytes: nullcontext())
        # The largest slot each worker could give one job, from the collector.
        self.offers = offers
        self.settings = settings
        self.store = store
        self.condor = condor
        self.audit = audit
        self.data = data
        # Reads the submitted job back, as GET would show it.
        self.jobs = jobs
        self.limits = bundles.ArchiveLimits(
            max_unpacked_bytes=settings.max_unpacked_bytes,
            max_members=settings.max_archive_members,
        )
        # A bundle is code: it may inflate to much less than a dataset.
        self.bundle_limits = bundles.ArchiveLimits(
            max_unpacked_bytes=min(settings.max_bundle_unpacked_bytes, settings.max_unpacked_bytes),
            max_members=settings.max_archive_members, setting="max_bundle_unpacked_bytes",
        )
        self.validations = ValidationPool(settings.archive_validation_workers, settings.archive_validations_per_user)
        # Jobs between condor submit and their row in the store: the tracker leaves them be.
        self._in_flight = in_flight
        # Keyed submissions of a stopped process that HTCondor's silence left unsettled.
        self.keyed_unsettled = False

    @contextmanager
    def staging(self, max_upload_bytes: int | None = None) -> Iterator[Staging]:
        job_id = str(uuid.uuid4())
        path = Path(self.settings.jobs_dir) / job_id
        private_dir(path.parent)
        make_private_dir(path)
        mark_job_dir(path, self.store.instance_id)
        limit = min(max_upload_bytes or self.settings.max_upload_bytes, self.settings.max_upload_bytes)
        staging = Staging(job_id, path, limit)
        self._in_flight.add(job_id)
        try:
            yield staging
        finally:
            self._in_flight.discard([job_id])
            if not staging.committed:
                shutil.rmtree(path, ignore_errors=True)

    def in_flight(self) -> set[str]:
        return self._in_flight.snapshot()

    def submit(self, staging: Staging, request: SubmitRequest) -> dict[str, Any]:
        """Validate the sources, queue the job (or the array, as one cluster), record it.

        Either everything is queued and recorded, or nothing is left: no row, no folder,
        no cluster in the schedd. Returns the job, or the array with its items.
        """
        actor = request.actor
        refs = self._gather_sources(staging, request)
        answer_into = self._check_answer_target(request)
        if answer_into:
            refs["all"].append(("answer", answer_into))
        name = _check_name(request.name or _default_name(staging.bundle_filename, request))
        notification_url = self._check_notification_url(request.notification_url)
        ttl = _check_ttl(request.ttl)
        runtime = self._check_runtime(request.runtime, request.runtime_wait)
        wanted = self._check_resources(request)
        waits = self._check_dependencies(request)
        item_arguments = self._item_arguments(request)
        # What the schedd's spool will hold: every item its own copy of every input, of its
        # arguments.sh and of the launcher (measured on HTCondor 25: nothing is shared).
        inputs = staging.input_bytes() + sd.LAUNCHER.stat().st_size
        spool = [inputs + len(_arguments_file(words, index, request.is_array).encode())
                 for index, words in enumerate(item_arguments)]
        with self.reserve(actor, len(item_arguments), sum(spool)) as charge_id:
            archives = [(bundles.ArchiveSource(staging.bundle_path, "job-bundle", True, self.bundle_limits),
                         refs.get("bundle"))]
            for path, data_id in [(staging.input_path, refs.get("input"))] + [
                    (staging.path / n, d) for n, d in zip(staging.extra_inputs, refs.get("extra_inputs", []))]:
                if path.exists():
                    archives.append((bundles.ArchiveSource(path, "job-input", False, self.limits), data_id))
            self._validate_archives(actor, archives)
            return self._queue(staging, request, refs, name, notification_url, ttl, runtime, wanted,
                               item_arguments, spool, charge_id, waits)

    def _queue(self, staging: Staging, request: SubmitRequest, refs: dict[str, Any], name: str,
               notification_url: str | None, ttl: int | None, runtime: str | None, wanted: resources.Resources,
               item_arguments: list[list[str]], spool: list[int], charge_id: str | None,
               waits: "Waits") -> dict[str, Any]:
        """Submit the validated job as one cluster and record it with the charge that held its place."""
        actor = request.actor
        items = self._prepare_items(staging, item_arguments, request.is_array)
        spec = sd.JobSpec(
            job_id=items[0][0], instance_id=self.store.instance_id, owner=actor.user, name=name,
            job_dir=items[0][1], inputs=tuple(staging.sources()), request_id=request.request_id,
            runtime=runtime, request_cpus=wanted.cpus, request_memory_mb=wanted.memory_mb,
            request_disk_kb=wanted.disk_mb * 1024, time_limit=wanted.time_limit,
            max_output_mb=-(-self.settings.max_output_bytes // (1 << 20)),
            stream_output=self.settings.live_output_enabled, url_inputs=self._check_url_inputs(request),
            waiting=waits.waiting,
        )
        now = now_iso()
        # The data object the answer goes into (seed 003's data2_id), checked with the sources.
        answer_into = next((data_id for role, data_id in refs["all"] if role == "answer"), None)
        array_id = str(uuid.uuid4()) if request.is_array else None
        expires_at = to_iso(datetime.now(timezone.utc) + timedelta(seconds=ttl)) if ttl else None
        rows = [{
            "id": job_id, "name": name, "owner": actor.user, "state": JobState.IDLE.value,
            "awaiting_dependencies": 1 if waits.waiting else None, "state_reason": waits.reason,
            "backend_status": "Idle", "cluster_id": None, "proc_id": None,
            "arguments": json.dumps(arguments), "notification_url": notification_url,
            "notification_events": request.notification_events, "has_input": staging.has_input,
            "job_dir": str(job_dir), "request_id": request.request_id, "created_at": now, "updated_at": now,
            "array_id": array_id, "kind": "command" if request.command else "bundle",
            "command": request.command, "ttl": ttl, "expires_at": expires_at, "runtime": runtime,
            "request_cpus": wanted.cpus, "request_memory_mb": wanted.memory_mb,
            "request_disk_mb": wanted.disk_mb, "time_limit": wanted.time_limit, "spool_bytes": spool[index],
            "answer_into": answer_into,
        } for index, (job_id, job_dir, arguments) in enumerate(items)]
        data_refs = [(job_id, data_id, role) for job_id, _, _ in items for role, data_id in refs.get("all", [])]
        array = {"id": array_id, "owner": actor.user, "name": name, "cluster_id": None,
                 "count": len(items), "created_at": now} if array_id else None
        edges = [(job_id, after_id, mode) for job_id, _, _ in items for after_id, mode in waits.edges]
        # With a key, what to record if this process dies once the schedd has the jobs.
        keyed = KeyedSubmission(actor.user, request.idempotency_key, array_id,
                                {"rows": rows, "data_refs": data_refs, "array": array,
                                 "dependencies": edges}) \
            if request.idempotency_key else None
        # Durably before the submit: whoever tracks this database sees these jobs are ours.
        self.store.add_intents((job_id for job_id, _, _ in items), os.getpid(), keyed)
        try:
            if request.is_array:
                description = sd.render_submit(spec, per_item=True)
                cluster_id, first_proc = self.condor.submit_spooled(
                    description, sd.item_data((job_id, job_dir) for job_id, job_dir, _ in items))
            else:
                cluster_id, first_proc = self.condor.submit_spooled(sd.render_submit(spec))
        except CondorUnavailable as exc:
            self._discard_items(staging, items)
            raise BackendUnavailable(f"HTCondor does not answer, so the job was not queued; retry later ({exc})") from exc
        except CondorRefused as exc:
            self._discard_items(staging, items)
            raise BackendRefused(f"HTCondor refused the job: {exc}") from exc

        rows = [{**row, "cluster_id": cluster_id, "proc_id": first_proc + index} for index, row in enumerate(rows)]
        if array:
            array = {**array, "cluster_id": cluster_id}
        try:
            self.store.insert_jobs(rows, reason="submitted", data_refs=data_refs, array=array, charge_id=charge_id,
                                   dependencies=edges)
        except Exception:
            self.condor.remove_quietly(sd.cluster_constraint(cluster_id), "the gateway could not record the job")
            self._discard_items(staging, items)
            raise
        staging.committed = True
        if request.is_array:
            shutil.rmtree(staging.path, ignore_errors=True)  # the items hold their own links
        self._release_in_flight(items)
        log.info("queued %d job(s) as cluster %s (%s)", len(items), cluster_id, name)
        self.audit.record(actor, "job.submit", array_id or items[0][0], request_id=request.request_id,
                          detail={"name": name, "cluster_id": cluster_id, "items": len(items)})
        if array_id:
            return self.jobs.get_array(array_id, actor)
        return self.jobs.get(items[0][0], actor)

    @staticmethod
    def _check_url_inputs(request: SubmitRequest) -> tuple[str, ...]:
        names = [sd.url_input_name(url) for url in request.url_inputs]
        if None in names or len(set(names)) != len(names):
            raise InvalidRequest("input URLs must be plain http(s) URLs ending in distinct file names "
                                 "(no query, no $, comma, quote or space)", field="url_inputs")
        return tuple(request.url_inputs)

    def _check_resources(self, request: SubmitRequest) -> resources.Resources:
        """A request no worker could ever satisfy is refused with the largest offer,
        unless asked to wait (a bigger worker may join)."""
        wanted = resources.resources_from(request.cpus, request.memory, request.disk, request.time_limit)
        if request.resources_wait or self.offers is None:
            return wanted
        try:
            offers = self.offers()
        except Exception as exc:  # the collector is down: HTCondor's matchmaking still decides
            log.warning("could not check the resource request against the workers: %s", exc)
            return wanted
        refusal = resources.unsatisfiable_reason(wanted, offers)
        if refusal:
            message, field_name, largest = refusal
            raise InvalidRequest(message, field=field_name, largest_offer=largest)
        return wanted

    def _check_dependencies(self, request: SubmitRequest) -> "Waits":
        """The jobs (or arrays) the submission waits for: the caller's own, named once each,
        none that already ended in a way that means this job could never start."""
        edges = [(after_id, dependencies.AFTER_OK) for after_id in request.after] + [
            (after_id, dependencies.AFTER_ANY) for after_id in request.after_any]
        if not edges:
            return Waits()
        field_of = {dependencies.AFTER_OK: "after", dependencies.AFTER_ANY: "after_any"}
        if len(edges) > dependencies.MAX_DEPENDENCIES:
            raise InvalidRequest(f"a job waits for at most {dependencies.MAX_DEPENDENCIES} jobs or arrays; "
                                 f"this one names {len(edges)}", field="after")
        named = [(check_job_id(after_id, field_of[mode]), mode) for after_id, mode in edges]
        repeated = sorted({after_id for after_id, _ in named if sum(a == after_id for a, _ in named) > 1})
        if repeated:
            raise InvalidRequest(f"after and after_any name {', '.join(repeated)} more than once; name each job once",
                                 field="after", repeated=repeated)
        targets = self.store.dependency_targets(after_id for after_id, _ in named)
        for after_id, mode in named:
            target = targets.get(after_id)
            # Another user's job is as unknown as one that never existed: ids do not leak.
            if target is None or target["owner"] != request.actor.user:
                raise InvalidRequest(f"{field_of[mode]}: no job or array {after_id} of yours; a job waits only for "
                                     "your own jobs (GET /jobs lists them)", field=field_of[mode])
        decided = dependencies.verdict(named, targets)
        if decided.decision == "end":
            raise Conflict(f"after: {decided.reason}, so this job could never start; name jobs that can still "
                           "complete, or use after_any to run once they end whatever their outcome", field="after")
        return Waits(named, decided.decision == "wait", decided.reason)

    def _check_answer_target(self, request: SubmitRequest) -> str | None:
        """The data object the answer goes into: the caller's own, and no active job's answer already."""
        if not request.answer_into:
            return None
        if request.is_array:
            raise InvalidRequest("an array's items cannot all answer into one data object", field="answer_into")
        row = self.data.for_job(request.actor, request.answer_into, "answer_into")
        if row["owner"] != request.actor.user:
            raise Forbidden(f"answer_into: data object {row['id']} belongs to {row['owner']}; "
                            "a job writes its answer only into its owner's objects", field="answer_into")
        busy = [job["id"] for job in self.store.jobs_answering_into(s.value for s in ACTIVE_STATES)
                if job["answer_into"] == row["id"]]
        if busy:
            raise Conflict(f"answer_into: job {busy[0]} is already writing its answer into data object {row['id']}; "
                           "register another one", field="answer_into", jobs=busy)
        return row["id"]

    def _check_runtime(self, runtime: str | None, wait: bool) -> str | None:
        """A runtime no worker offers is refused (listing what exists) unless asked to wait."""
        if not runtime:
            return None
        if not re.match(r"^[A-Za-z0-9._+-]{1,64}$", runtime):
            raise InvalidRequest("job-runtime is a name such as python3", field="job-runtime")
        if wait or self.runtimes is None:
            return runtime
        try:
            offered = self.runtimes()
        except BackendUnavailable:
            return runtime  # cannot check now; the requirement still keeps it off other nodes
        if runtime not in offered:
            raise InvalidRequest(
                f"no worker offers runtime '{runtime}'; workers offer: {', '.join(sorted(offered)) or 'none'}. "
                "Send job-runtime-wait=true to queue it anyway until such a worker joins",
                field="job-runtime", available=sorted(offered))
        return runtime

    def _gather_sources(self, staging: Staging, request: SubmitRequest) -> dict[str, Any]:
        """Bring data objects and commands into the staging folder; returns what came from where."""
        refs: dict[str, Any] = {"all": [], "extra_inputs": []}
        actor = request.actor
        self._check_ids(request.input_ids, "job-input-ids")
        self._check_ids(request.input_file_ids, "input_files")
        given = [staging.has_bundle, bool(request.bundle_id), bool(request.command)]
        if sum(given) > 1:
            raise InvalidRequest("give one of job-bundle, job-bundle-id or command", field="job-bundle")
        if request.bundle_id:
            row = self.data.for_job(actor, request.bundle_id, "job-bundle-id")
            link_or_copy(Path(row["path"]), staging.bundle_path)
            staging.has_bundle, staging.bundle_filename = True, row["filename"]
            refs["bundle"] = row
            refs["all"].append(("bundle", row["id"]))
        elif request.command:
            if len(request.command.encode()) > self.settings.max_argument_bytes:
                raise TooLarge(f"command is longer than {self.settings.max_argument_bytes} bytes (max_argument_bytes)",
                               field="command", limit=self.settings.max_argument_bytes)
            if "\0" in request.command:
                raise InvalidRequest("command cannot contain NUL characters", field="command")
            bundles.write_script_bundle(f"#!/bin/sh\n{request.command}\n", staging.bundle_path)
            staging.has_bundle = True
        if not staging.has_bundle:
            raise InvalidRequest(
                "job-bundle is required: a .tar.gz holding run.sh at its root (or job-bundle-id, or command)",
                field="job-bundle")
        if (request.binary_id or request.input_file_ids) and not request.command:
            raise InvalidRequest("binary and input_files go with command", field="binary")
        for data_id in request.input_ids:
            row = self.data.for_job(actor, data_id, "job-input-ids")
            first = not staging.has_input
            staging.add_input_link(Path(row["path"]))
            if first:
                refs["input"] = row
            else:
                refs["extra_inputs"].append(row)
            refs["all"].append(("input", row["id"]))
        if request.binary_id:
            row = self.data.for_job(actor, request.binary_id, "binary")
            staging.add_file_link(Path(row["path"]), row["filename"], executable=True, field_name="binary")
            refs["all"].append(("binary", row["id"]))
        for data_id in request.input_file_ids:
            row = self.data.for_job(actor, data_id, "input_files")
            staging.add_file_link(Path(row["path"]), row["filename"], executable=False, field_name="input_files")
            refs["all"].append(("input_file", row["id"]))
        return refs

    def _check_ids(self, ids: list[str], field_name: str) -> None:
        """Each data id is one more copy in the schedd's spool: a few, each once."""
        most = self.settings.max_input_ids
        if len(ids) > most:
            raise TooLarge(f"{field_name} names {len(ids)} data ids; a job takes at most {most} (max_input_ids)",
                           field=field_name, limit=most)
        repeated = sorted({data_id for data_id in ids if ids.count(data_id) > 1})
        if repeated:
            raise InvalidRequest(f"{field_name} names {', '.join(repeated)} more than once; name each data id once",
                                 field=field_name, repeated=repeated)

    def _item_arguments(self, request: SubmitRequest) -> list[list[str]]:
        if request.array is not None and request.count is not None:
            raise InvalidRequest("give either an array of argument sets or a count, not both", field="array")
        if request.is_array:
            count = request.item_count
            if not 1 <= count <= self.settings.max_array_items:
                raise InvalidRequest(f"an array has 1 to {self.settings.max_array_items} items", field="array")
        if request.array is not None:
            items = [self._words(item, "job-array") for item in request.array]
        else:
            items = [self._words(request.arguments, "job-arguments")] * request.item_count
        # Every item's words are stored with its record: the items together are capped too.
        total = sum(_size(words) for words in items)
        if request.is_array and total > self.settings.max_body_bytes:
            raise TooLarge(f"the array's arguments come to {total} bytes over its {len(items)} items; all items "
                           f"together may have at most {self.settings.max_body_bytes} (max_body_bytes)",
                           field="job-array", limit=self.settings.max_body_bytes)
        return [list(words) for words in items]

    def _words(self, value: str | list[str] | None, field_name: str) -> list[str]:
        """One job's arguments as words (a string is split like a shell would), within the limits."""
        limit, most = self.settings.max_argument_bytes, self.settings.max_arguments
        if isinstance(value, str) and len(value.encode()) > limit:
            raise TooLarge(f"{field_name} is longer than {limit} bytes (max_argument_bytes)", field=field_name,
                           limit=limit)
        words = list(value) if isinstance(value, list) else _parse_arguments(value, field_name)
        if len(words) > most:
            raise TooLarge(f"{field_name} has {len(words)} arguments; a job takes at most {most} (max_arguments)",
                           field=field_name, limit=most)
        if _size(words) > limit:
            raise TooLarge(f"{field_name} come to {_size(words)} bytes; a job's arguments are at most {limit} bytes "
                           "(max_argument_bytes)", field=field_name, limit=limit)
        return _check_words(words, field_name)

    def _prepare_items(self, staging: Staging, item_arguments: list[list[str]],
                       is_array: bool) -> list[tuple[str, Path, list[str]]]:
        """One folder per item: the staging folder for a lone job, linked copies for an array."""
        restrict_tree(staging.path)  # copies and a command's bundle were made under the umask
        if not is_array:
            write_private(staging.path / sd.ARGUMENTS_FILE, _arguments_file(item_arguments[0], 0, False))
            return [(staging.job_id, staging.path, item_arguments[0])]
        items = []
        sources = staging.sources()
        try:
            for index, arguments in enumerate(item_arguments):
                job_id = str(uuid.uuid4())
                job_dir = Path(self.settings.jobs_dir) / job_id
                self._in_flight.add(job_id)
                items.append((job_id, job_dir, arguments))
                make_private_dir(job_dir)
                mark_job_dir(job_dir, self.store.instance_id)
                for name in sources:
                    _link_tree(staging.path / name, job_dir / name)
                write_private(job_dir / sd.ARGUMENTS_FILE, _arguments_file(arguments, index, True))
        except BaseException:
            self._discard_items(staging, items)
            raise
        return items

    def _discard_items(self, staging: Staging, items) -> None:
        """A submission that failed: its folders, in-flight marks and intents go."""
        self.store.drop_intents(job_id for job_id, _, _ in items)
        for job_id, job_dir, _ in items:
            if job_dir != staging.path:
                shutil.rmtree(job_dir, ignore_errors=True)
        self._release_in_flight(items)

    def _release_in_flight(self, items) -> None:
        self._in_flight.discard(job_id for job_id, _, _ in items)

    def _check_notification_url(self, url: str | None) -> str | None:
        if not url:
            return None
        try:
            return targets.check_url(url, allow_private=self.settings.private_webhooks_allowed)
        except targets.UnsafeTarget as exc:
            raise InvalidRequest(f"job-notification {exc}", field="job-notification") from exc

    def _validate_archives(self, actor: Actor,
                           archives: list[tuple[bundles.ArchiveSource, dict[str, Any] | None]]) -> None:
        """Check the job's archives as one tree, in the order the launcher unpacks them, on
        the validation pool (one task for the job).

        A data object's verdict is remembered for its exact content, with whether it holds
        symlinks: one known valid is walked again only when links could chain across
        archives (it is not alone, and some archive of the job holds a link).
        """
        def known(source: bundles.ArchiveSource, row: dict[str, Any] | None) -> str | None:
            check = self.data.archive_check(row) if row else None
            if not check or (check[0] != "bundle" and source.require_run_sh):
                return None
            return "links" if check[1] else "nolinks"

        skipped = [i for i, (source, row) in enumerate(archives)
                   if known(source, row) == "nolinks" or (len(archives) == 1 and known(source, row))]
        walked = [i for i in range(len(archives)) if i not in skipped]

        def check() -> list[bundles.ArchiveSummary]:
            try:
                found = bundles.validate_archives([archives[i][0] for i in walked], limits=self.limits)
            except bundles.ArchiveRejected:
                if not skipped:
                    raise
                found = None
            if skipped and (found is None or any(summary.symlinks for summary in found)):
                # Links meet archives not read this time: the chain needs all their names.
                walked[:] = range(len(archives))
                return bundles.validate_archives([source for source, _ in archives], limits=self.limits)
            return found

        try:
            summaries = self.validations.run(actor.user, check) if walked else []
        except bundles.ArchiveRejected as exc:
            error = TooLarge if exc.too_large else InvalidRequest
            raise error(exc.reason, field=exc.field) from exc
        for i, summary in zip(walked, summaries):
            row = archives[i][1]
            if row:
                # "bundle" only for what a bundle may hold: an input's run.sh does not make a 4 GiB bundle.
                fits_a_bundle = summary.has_run_sh and summary.unpacked_bytes <= self.bundle_limits.max_unpacked_bytes \
                    and summary.inflated_bytes <= self.bundle_limits.max_inflated_bytes
                self.data.note_archive_check(row["id"], row["sha256"], "bundle" if fits_a_bundle else "archive",
                                             links=bool(summary.symlinks))

    def recover_keyed_submissions(self, at_start: bool = False) -> list[str]:
        """Settle the submissions a stopped process was making under an idempotency key
        (at start-up; later, those HTCondor's silence left unsettled). Jobs the schedd
        accepted are recorded (from the rows tied to the key) and the key kept, so a retry
        gets them rather than a second submission; a key whose jobs never reached the
        schedd is released. Returns the job ids still unsettled: keep their intents.
        """
        unsettled: list[str] = []
        states = ("processing", "unsettled") if at_start else ("unsettled",)
        for claim in self.store.idempotency_keys_in(states):
            owner, key, job_ids = claim["owner"], claim["key"], claim["job_ids"]
            if not job_ids:  # stopped before the submit: nothing was queued
                self.store.release_idempotency_key(owner, key)
            elif self.store.get_job(job_ids[0]) is not None:  # recorded, stopped before the answer
                self.store.mark_idempotency_key(owner, key, "recovered")
            else:
                try:
                    ads = self.condor.query(sd.jobs_constraint(self.store.instance_id, job_ids),
                                            ID_PROJECTION)
                except CondorUnavailable as exc:
                    log.warning("cannot yet tell whether the schedd holds the jobs of a keyed submission: %s", exc)
                    self.store.mark_idempotency_key(owner, key, "unsettled")
                    unsettled += job_ids
                    continue
                self._settle_keyed(claim, {ad.gateway_job_id: ad for ad in ads})
        self.keyed_unsettled = bool(unsettled)
        return unsettled

    def recover_unsettled(self) -> None:
        """What the tracker runs before each sweep: the keyed submissions HTCondor's silence left unsettled."""
        if self.keyed_unsettled:
            self.recover_keyed_submissions()

    def _settle_keyed(self, claim: dict[str, Any], ads: dict[str, JobAd]) -> None:
        owner, key, job_ids, pending = claim["owner"], claim["key"], claim["job_ids"], claim["pending"]
        if pending and all(job_id in ads for job_id in job_ids):
            rows = [{**row, "cluster_id": ads[row["id"]].cluster_id, "proc_id": ads[row["id"]].proc_id}
                    for row in pending["rows"]]
            array = pending["array"] and {**pending["array"], "cluster_id": rows[0]["cluster_id"]}
            self.store.insert_jobs(rows, reason="submitted (recorded after a gateway restart)",
                                   data_refs=[tuple(ref) for ref in pending["data_refs"]], array=array,
                                   dependencies=[tuple(edge) for edge in pending.get("dependencies", [])])
            self.store.mark_idempotency_key(owner, key, "recovered")
            log.info("recorded %d job(s) the schedd accepted before the gateway stopped (idempotency key of %s)",
                     len(rows), owner)
            return
        if ads:  # part of a cluster: HTCondor submits a cluster whole, so this is not ours to keep
            self.condor.remove_quietly(sd.jobs_constraint(self.store.instance_id, job_ids),
                                       "the gateway stopped while submitting the job")
        self.store.drop_intents(job_ids)
        self.store.release_idempotency_key(owner, key)


    def keyed_submission(self, key_row: dict[str, Any], actor: Actor) -> dict[str, Any]:
        """The job (or array) an idempotency key's submission made, as ``submit`` returned it."""
        if key_row.get("array_id"):
            return self.jobs.get_array(key_row["array_id"], actor)
        return self.jobs.get(key_row["job_ids"][0], actor)


def _arguments_file(words: list[str], index: int, is_array: bool) -> str:
    """arguments.sh of one job, or of one array item (which also learns its index)."""
    script = sd.arguments_script(words)
    return script + f"export MODACLOUDS_BATCH_ARRAY_INDEX={index}\n" if is_array else script


def _check_ttl(ttl: Any) -> int | None:
    if ttl is None or ttl == "":
        return None
    try:
        value = int(ttl)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
        raise InvalidRequest("ttl must be a whole number of seconds", field="ttl") from None
    if not 0 < value <= MAX_TTL_SECONDS:
        raise InvalidRequest(f"ttl must be a positive number of seconds, at most {MAX_TTL_SECONDS}", field="ttl")
    return value


def _link_tree(src: Path, dest: Path) -> None:
    if src.is_dir():
        make_private_dir(dest)
        for child in src.iterdir():
            _link_tree(child, dest / child.name)
    else:
        link_or_copy(src, dest)


def _default_name(filename: str | None, request: "SubmitRequest | None" = None) -> str:
    if request is not None and request.command and not filename:
        return "command"
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


def _parse_arguments(text: str | None, field_name: str = "job-arguments") -> list[str]:
    """Split like a POSIX shell would, without ever running one (the caller caps the length)."""
    if not text:
        return []
    try:
        return shlex.split(text, posix=True)
    except ValueError as exc:
        raise InvalidRequest(f"{field_name} could not be split like a shell would: {exc}", field=field_name) from exc


def _size(words: list[str]) -> int:
    """Bytes the words take as the job receives them (UTF-8, one separator each)."""
    return sum(len(word.encode()) + 1 for word in words)


def _check_words(words: list[str], field_name: str) -> list[str]:
    """Arguments travel as C strings to the job: a NUL would cut one short, so it is refused."""
    if any("\0" in word for word in words):
        raise InvalidRequest(f"{field_name} cannot contain NUL characters", field=field_name)
    return words
