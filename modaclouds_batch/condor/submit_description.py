"""Render a gateway job into an HTCondor submit description; ClassAd names live here.

Pure: ``htcondor2.Submit`` needs no pool, so this is unit-testable offline.
"""

from __future__ import annotations

import re

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import classad2
import htcondor2

from .job_ad import GATEWAY_JOB_ID, GATEWAY_WAITING, JobStatus

# Attributes the gateway adds to every job ad, so the schedd alone can say whose job is whose.
GATEWAY_INSTANCE = "GatewayInstance"
GATEWAY_OWNER = "GatewayOwner"
GATEWAY_JOB_NAME = "GatewayJobName"
GATEWAY_REQUEST_ID = "GatewayRequestId"
# True while a job waits for its dependencies: its requirements match no slot until the
# tracker edits it to false (HTCondor refuses `hold = true` on a spooled submission).
# Seconds run.sh may run; the launcher stops it then and exits TIME_LIMIT_EXIT_CODE.
GATEWAY_TIME_LIMIT = "GatewayTimeLimit"
TIME_LIMIT_EXIT_CODE = 124  # as coreutils' `timeout` says it
TIME_LIMIT_ENV = "MODACLOUDS_BATCH_TIME_LIMIT"
# HTCondor's own limit (allowed_job_duration holds the job) comes this much later, as a
# backstop for a launcher that could not stop run.sh (unpacking and packing included).
TIME_LIMIT_BACKSTOP_SECONDS = 300

LAUNCHER = Path(__file__).with_name("launcher.sh")
BUNDLE_FILE = "bundle.tar.gz"
INPUT_FILE = "input.tar.gz"
ARGUMENTS_FILE = "arguments.sh"
FILES_DIR = "files"
# Startd attribute listing the runtimes a worker offers, e.g. "bash,python3".
RUNTIMES_ATTR = "GatewayRuntimes"
# Item variables of an array submission (one proc per item, one folder and id each).
ITEM_JOB_ID = "gateway_job_id"
ITEM_JOB_DIR = "gateway_job_dir"
STDOUT_FILE = "stdout.txt"
STDERR_FILE = "stderr.txt"
OUTPUT_FILE = "output.tar.gz"

# What the tracker and the detail view read from job ads: one projection for all queries.
JOB_PROJECTION = [
    GATEWAY_JOB_ID,
    "ClusterId",
    "ProcId",
    "GlobalJobId",
    "JobStatus",
    "HoldReason",
    "HoldReasonCode",
    "RemoveReason",
    "ExitCode",
    "ExitBySignal",
    "ExitSignal",
    "JobStartDate",
    "JobCurrentStartDate",
    "JobCurrentStartExecutingDate",
    "TransferringInput",
    "CompletionDate",
    "EnteredCurrentStatus",
    "NumJobStarts",
    "JobPrio",
    "JobUniverse",
    "ImageSize",
    "RemoteUserCpu",
    "RemoteSysCpu",
    "RemoteHost",
    "LastRemoteHost",
    # Why a job that ran was requeued (an execute node lost, an eviction).
    "VacateReason",
    "QDate",
    GATEWAY_TIME_LIMIT,
    "RemoteWallClockTime",
    "RequestCpus",
    "RequestMemory",
    "RequestDisk",
    # Where a streaming job's stdout and stderr grow (its spool folder).
    "Iwd",
    "StreamOut",
    GATEWAY_WAITING,
]


@dataclass(frozen=True)
class JobSpec:
    """Everything HTCondor needs to know about one gateway job."""

    job_id: str
    instance_id: str
    owner: str
    name: str
    job_dir: Path
    # Files besides arguments.sh, from the job folder: bundle.tar.gz, input*.tar.gz, files.
    inputs: tuple[str, ...] = ("bundle.tar.gz",)
    request_id: str | None = None
    runtime: str | None = None
    request_cpus: int = 1
    request_memory_mb: int = 128
    request_disk_kb: int = 1024 * 1024
    # Seconds run.sh may run (None: no limit).
    time_limit: int | None = None
    # MiB the job may send back at exit (output.tar.gz; stdout/stderr unless streamed); None: HTCondor's default.
    max_output_mb: int | None = None
    # Stream stdout and stderr into the schedd's spool as the job prints them (live output).
    stream_output: bool = False
    # http(s) URLs HTCondor fetches on the execute node (its curl plugin) into the sandbox,
    # each under its URL's last path segment; checked by check_url_input.
    url_inputs: tuple[str, ...] = ()
    # Waits for other jobs: queued with its GatewayWaiting gate closed.
    waiting: bool = False


# What a URL in transfer_input_files may hold: no comma or space (the list's separators),
# no $ (macro expansion), no quotes or parentheses; no query or fragment (the sandbox file
# is named by the path's last segment).
_URL_INPUT = re.compile(r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~!&*+;=%@:-]*)*$")
# Names in the sandbox a URL input may not take.
SANDBOX_NAMES = frozenset({ARGUMENTS_FILE, BUNDLE_FILE, INPUT_FILE, FILES_DIR, STDOUT_FILE, STDERR_FILE,
                           OUTPUT_FILE, "work", "output", "scratch", "launcher.sh"})


def url_input_name(url: str) -> str | None:
    """The sandbox file name an http(s) input URL lands under, or None if the URL cannot travel
    safely in transfer_input_files."""
    if not _URL_INPUT.match(url):
        return None
    name = url.rsplit("/", 1)[-1]
    if "/" not in url.split("://", 1)[1] or not name or name.startswith(".") or name in SANDBOX_NAMES \
            or name.startswith("input-"):
        return None
    return name


def submit_string(text: str) -> str:
    """A ClassAd string literal that no submit or match-time macro can expand.

    ``$(...)`` and ``$$(...)`` are expanded at submit and match time in any job ad value
    and no escape survives both, so a ``$`` in a name is shown as ``_`` in the ad only.
    """
    return classad2.quote(text.replace("$", "_"))


def shell_quote(arg: str) -> str:
    """One POSIX sh word that the shell takes literally: nothing inside is expanded."""
    if "\0" in arg:
        raise ValueError("arguments cannot contain NUL characters")
    return "'" + arg.replace("'", "'\\''") + "'"


def arguments_script(args: Iterable[str]) -> str:
    """The launcher sources this file to receive the job's arguments.

    Arguments travel as a file rather than HTCondor's ``arguments`` because submit and
    match-time macro expansion (``$(x)``, ``$$(x)``) cannot be escaped reliably there.
    """
    return "set -- " + " ".join(shell_quote(a) for a in args) + "\n"


def render_submit(spec: JobSpec, per_item: bool = False) -> htcondor2.Submit:
    """One job; with ``per_item``, every proc takes its id and folder from its item data."""
    if any(url_input_name(url) is None for url in spec.url_inputs):
        raise ValueError("an input URL that cannot travel in transfer_input_files")
    inputs = [ARGUMENTS_FILE, *spec.inputs, *spec.url_inputs]
    description = {
        "universe": "vanilla",
        "executable": str(LAUNCHER),
        "transfer_executable": "true",
        "initialdir": str(spec.job_dir),
        "should_transfer_files": "YES",
        "when_to_transfer_output": "ON_EXIT",
        # Only what the contract defines comes back: output.tar.gz (the launcher writes an
        # empty one before anything else, so it always exists), stdout and stderr; not
        # whatever else the job leaves at the top of its sandbox.
        "transfer_output_files": OUTPUT_FILE,
        "transfer_input_files": ",".join(inputs),
        "output": STDOUT_FILE,
        "error": STDERR_FILE,
        "request_cpus": str(spec.request_cpus),
        "request_memory": f"{spec.request_memory_mb}MB",
        "request_disk": f"{spec.request_disk_kb}KB",
        "JobBatchName": submit_string(spec.name),
        f"My.{GATEWAY_JOB_ID}": submit_string(spec.job_id),
        f"My.{GATEWAY_INSTANCE}": submit_string(spec.instance_id),
        f"My.{GATEWAY_OWNER}": submit_string(spec.owner),
        f"My.{GATEWAY_JOB_NAME}": submit_string(spec.name),
        # Fair share per gateway user, not per the gateway's single pool identity.
        "accounting_group": accounting_group(spec.owner),
        "accounting_group_user": spec.owner,
    }
    if spec.max_output_mb:
        # Past it HTCondor holds the job (HoldReasonCode 33) rather than fill the spool.
        description["max_transfer_output_mb"] = str(int(spec.max_output_mb))
    if spec.stream_output:
        # The files then never travel at exit: the tracker copies them from the spool (Iwd).
        description["stream_output"] = "true"
        description["stream_error"] = "true"
    if spec.request_id:
        description[f"My.{GATEWAY_REQUEST_ID}"] = submit_string(spec.request_id)
    if spec.time_limit:
        description[f"My.{GATEWAY_TIME_LIMIT}"] = str(int(spec.time_limit))
        description["environment"] = f"{TIME_LIMIT_ENV}={int(spec.time_limit)}"
        description["allowed_job_duration"] = str(int(spec.time_limit) + TIME_LIMIT_BACKSTOP_SECONDS)
    requirements = []
    if spec.runtime:
        requirements.append(f"stringListMember({classad2.quote(spec.runtime)}, {RUNTIMES_ATTR} ?: \"\")")
    if spec.waiting:
        description[f"My.{GATEWAY_WAITING}"] = "true"
        requirements.append(f"(My.{GATEWAY_WAITING} =!= true)")
    if requirements:
        description["requirements"] = " && ".join(requirements)
    if per_item:
        description["initialdir"] = f"$({ITEM_JOB_DIR})"
        description[f"My.{GATEWAY_JOB_ID}"] = f'"$({ITEM_JOB_ID})"'
    return htcondor2.Submit(description)


def item_data(items: Iterable[tuple[str, Path]]) -> list[dict[str, str]]:
    """Item data for ``render_submit(per_item=True)``: (job id, job folder) per proc."""
    return [{ITEM_JOB_ID: job_id, ITEM_JOB_DIR: str(job_dir)} for job_id, job_dir in items]


def accounting_group(owner: str) -> str:
    """The HTCondor accounting group of a gateway user (names are [a-z0-9_-], see access/identity)."""
    return f"group_{owner.replace('-', '_')}"


def instance_constraint(instance_id: str) -> str:
    """Every job this gateway submitted, and no other."""
    return f"{GATEWAY_INSTANCE} == {classad2.quote(instance_id)}"


def jobs_constraint(instance_id: str, job_ids: Iterable[str], status: JobStatus | None = None) -> str:
    """Exactly the named gateway jobs (those of them in ``status``, if given), as one
    expression (one round trip for all)."""
    ids = ", ".join(classad2.quote(j) for j in job_ids)
    named = f"{instance_constraint(instance_id)} && member({GATEWAY_JOB_ID}, {{{ids}}})"
    return named if status is None else f"{named} && JobStatus == {int(status)}"


def cluster_constraint(cluster_id: int) -> str:
    """Every proc of one cluster."""
    return f"ClusterId == {int(cluster_id)}"


def changed_since_constraint(instance_id: str, since: int, watched: Iterable[str] = ()) -> str:
    """This gateway's jobs whose status changed, or whose own process started, at or after
    ``since`` (epoch seconds on the schedd's clock), and the ``watched`` ones whatever they did.

    The schedd still evaluates it over its queue, but returns (and the tracker converts)
    only what changed: what a steady tracker cycle costs grows with the changes.
    """
    changed = f"EnteredCurrentStatus >= {int(since)} || JobCurrentStartExecutingDate >= {int(since)}"
    ids = ", ".join(classad2.quote(j) for j in watched)
    if ids:
        changed += f" || member({GATEWAY_JOB_ID}, {{{ids}}})"
    return f"{instance_constraint(instance_id)} && ({changed})"
