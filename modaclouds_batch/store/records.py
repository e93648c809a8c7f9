"""What the store's features share: the records callers pass in (JobChange, JobFilter,
KeyedSubmission), the SQL functions and columns, and the row decoders and cursors."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit




def url_host(url: str | None) -> str:
    """A URL's host name, lower case ("" when it has none): SQL's url_host(), and the key
    of the webhook worker's per-host limit."""
    try:
        return (urlsplit(url or "").hostname or "").lower()
    except ValueError:
        return ""


# What a list entry shows (api/views.job_summary) and how lists are paged: all a list reads.
SUMMARY_COLUMNS = "id, name, owner, state, created_at, cluster_id, proc_id, array_id"

# Given a job row as just stored in a new state, the outbox rows to write with it.
StateChangeHook = Callable[[dict[str, Any]], list[dict[str, Any]]]


@dataclass
class JobChange:
    """Fields to set on one job, with the state event to record when the state changes."""

    job_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    new_state: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class KeyedSubmission:
    """A submission made under a client's idempotency key: which key, and what to record
    (``pending``: the job rows, data references and array) if the gateway dies after the
    schedd accepted it."""

    owner: str
    key: str
    array_id: str | None
    pending: dict[str, Any]


@dataclass(frozen=True)
class JobFilter:
    owner: str | None = None
    states: tuple[str, ...] = ()
    name_glob: str | None = None
    created_after: str | None = None
    created_before: str | None = None
    array_id: str | None = None
    job_id: str | None = None
    # TES tasks only (the jobs with a tes_tasks row): a name prefix, (key, value) tags
    # where an empty value matches any value of that key.
    tes_only: bool = False
    tes_name_prefix: str | None = None
    tes_tags: tuple[tuple[str, str], ...] = ()
    # TES tasks whose state is one of these cases: (job state, the TES_CONDITIONS that hold,
    # those that do not). Given, it replaces ``states``.
    tes_state_cases: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = ()


# The facts a TES task's state turns on besides its job's state (dialects/tes.py CONDITIONS
# has each one in Python), as SQL over the jobs row and ``t``, the task's tes_tasks row.
TES_CONDITIONS = {
    "transferring_input": "jobs.backend_status = 'Transferring Input'",
    "input_unfetchable": "lower(coalesce(jobs.state_reason, '')) like '%transfer input files failure%'",
    "outputs_pending": "json_extract(t.task, '$._outputs') is not null and t.delivery is null",
    "outputs_failed": "json_extract(t.delivery, '$.error') is not null",
    "in_queue": "jobs.left_queue_at is null",
}


def _make_private(path: Path) -> None:
    """The database (and its -wal and -shm files, which SQLite creates with the database's
    own mode) readable by the gateway's user only, whatever the umask."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.chmod(side, 0o600)


def _decode_key(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    for column, empty in (("job_ids", []), ("pending", None), ("headers", [])):
        row[column] = json.loads(row[column]) if row[column] else empty
    return row


def _decode_job(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    if "arguments" in row:  # lists and the tracker do not read them
        row["arguments"] = json.loads(row["arguments"]) if row["arguments"] else []
    for flag in ("has_input", "exit_by_signal"):
        if row.get(flag) is not None:
            row[flag] = bool(row[flag])
    return row


def _job_filter_sql(flt: JobFilter) -> tuple[list[str], list[Any]]:
    # "expired_at is null" comes first: the job tallies' total (Store._count_matching) drops it.
    where: list[str] = ["expired_at is null"]
    params: list[Any] = []
    if flt.array_id is not None:
        where.append("array_id = ?")
        params.append(flt.array_id)
    if flt.owner is not None:
        where.append("owner = ?")
        params.append(flt.owner)
    if flt.states:
        where.append(f"state in ({','.join('?' * len(flt.states))})")
        params.extend(flt.states)
    if flt.name_glob:
        where.append("name glob ?")
        params.append(flt.name_glob)
    if flt.created_after:
        where.append("created_at >= ?")
        params.append(flt.created_after)
    if flt.created_before:
        where.append("created_at < ?")
        params.append(flt.created_before)
    if flt.tes_state_cases:
        cases = []
        for state, hold, fail in flt.tes_state_cases:
            terms = ["jobs.state = ?", *(TES_CONDITIONS[c] for c in hold),
                     *(f"not ({TES_CONDITIONS[c]})" for c in fail)]
            cases.append(" and ".join(terms))
            params.append(state)
        where.append("exists (select 1 from tes_tasks t where t.job_id = jobs.id and ("
                     + " or ".join(f"({case})" for case in cases) + "))")
    if flt.tes_only or flt.tes_name_prefix or flt.tes_tags:
        task_where = ["1"]
        if flt.tes_name_prefix:
            task_where.append("substr(tes_name, 1, ?) = ?")
            params += [len(flt.tes_name_prefix), flt.tes_name_prefix]
        for key, value in flt.tes_tags:
            task_where.append("exists (select 1 from json_each(tes_tasks.tags) where key = ? and (? = '' or value = ?))")
            params += [key, value, value]
        where.append(f"id in (select job_id from tes_tasks where {' and '.join(task_where)})")
    return where, params


def encode_cursor(created_at: str, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at}|{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """Raises ValueError for a cursor this module did not make."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, job_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|", 1)
    except Exception as exc:  # any decoding failure means the same thing to the caller
        raise ValueError("malformed cursor") from exc
    return created_at, job_id
