"""The gateway's durable state in SQLite (sqlite-utils, WAL mode).

Nothing else in the package writes SQL. Every query that matters has a name here.
One connection is shared by waitress' threads, the tracker and the webhook worker,
serialised by a lock: SQLite serialises writers anyway, and reads are short.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlsplit

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from .timefmt import now_iso

migrations = Migrations("modaclouds_batch")


@migrations()
def m001_jobs(db: Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["jobs"].create(
        {
            "id": str,
            "name": str,
            "owner": str,
            "state": str,
            "state_reason": str,
            "backend_status": str,
            "cluster_id": int,
            "proc_id": int,
            "global_job_id": str,
            "arguments": str,  # JSON list
            "notification_url": str,
            "notification_events": str,
            "has_input": int,
            "job_dir": str,
            "request_id": str,
            "created_at": str,
            "updated_at": str,
            "started_at": str,
            "completed_at": str,
            "exit_status": int,
            "exit_by_signal": int,
            "exit_signal": int,
            "run_count": int,
            "priority": int,
            "universe": int,
            "image_size_kb": int,
            "cpu_user_seconds": float,
            "cpu_system_seconds": float,
            "remote_host": str,
            "outputs_retrieved_at": str,
            "retrieve_attempts": int,
        },
        pk="id",
        not_null={"name", "owner", "state", "created_at", "updated_at"},
        defaults={"retrieve_attempts": 0, "has_input": 0, "notification_events": "final"},
    )
    db["jobs"].create_index(["created_at", "id"])
    db["jobs"].create_index(["state"])
    db["jobs"].create_index(["cluster_id", "proc_id"])
    db["job_events"].create(
        {"id": int, "job_id": str, "state": str, "reason": str, "at": str},
        pk="id",
        foreign_keys=[("job_id", "jobs", "id")],
    )
    db["job_events"].create_index(["job_id", "id"])


@migrations()
def m002_outbox(db: Database) -> None:
    db["outbox"].create(
        {
            "id": str,  # the webhook-id receivers dedupe on; stable across retries
            "job_id": str,
            "event_type": str,
            "url": str,
            "payload": str,  # JSON, exactly the bytes sent
            "status": str,  # pending | delivered | failed
            "attempts": int,
            "created_at": str,
            "next_attempt_at": str,
            "delivered_at": str,
            "last_error": str,
        },
        pk="id",
        foreign_keys=[("job_id", "jobs", "id")],
        defaults={"status": "pending", "attempts": 0},
    )
    db["outbox"].create_index(["status", "next_attempt_at"])
    db["outbox"].create_index(["job_id"])
    db["delivery_attempts"].create(
        {"id": int, "event_id": str, "at": str, "status_code": int, "error": str, "duration_ms": int},
        pk="id",
        foreign_keys=[("event_id", "outbox", "id")],
    )
    db["delivery_attempts"].create_index(["event_id", "id"])


@migrations()
def m003_users(db: Database) -> None:
    db["api_tokens"].create(
        {"id": str, "owner": str, "role": str, "token_hash": str, "label": str,
         "created_at": str, "expires_at": str, "revoked_at": str, "last_used_at": str},
        pk="id",
        not_null={"owner", "role", "token_hash", "created_at"},
    )
    db["api_tokens"].create_index(["token_hash"], unique=True)
    db["user_limits"].create(
        {"owner": str, "max_active_jobs": int, "max_upload_bytes": int, "submissions_per_minute": int},
        pk="owner",
    )
    db["audit"].create(
        {"id": int, "at": str, "actor": str, "role": str, "action": str, "target": str,
         "outcome": str, "detail": str, "request_id": str},
        pk="id",
    )
    db["audit"].create_index(["at"])
    db["audit"].create_index(["actor", "at"])
    db["jobs"].create_index(["owner", "created_at"])


@migrations()
def m004_data_arrays_expiry(db: Database) -> None:
    db["data_objects"].create(
        {"id": str, "owner": str, "filename": str, "content_type": str, "size": int, "sha256": str,
         "path": str, "source_job_id": str, "archive_check": str, "created_at": str, "updated_at": str,
         "expires_at": str},
        pk="id",
        not_null={"owner", "filename", "size", "sha256", "path", "created_at", "updated_at"},
    )
    db["data_objects"].create_index(["owner", "created_at"])
    # Which jobs use which data objects: deleting one still needed answers 409.
    db["job_data_refs"].create({"job_id": str, "data_id": str, "role": str}, pk=("job_id", "data_id", "role"))
    db["job_data_refs"].create_index(["data_id"])
    db["job_arrays"].create(
        {"id": str, "owner": str, "name": str, "cluster_id": int, "count": int, "created_at": str},
        pk="id",
    )
    for column, kind in (("array_id", str), ("kind", str), ("command", str), ("ttl", int),
                         ("expires_at", str), ("expired_at", str), ("answer_id", str)):
        db["jobs"].add_column(column, kind)
    db["jobs"].create_index(["array_id"])
    db["jobs"].create_index(["expires_at"])


@migrations()
def m005_worker_requests(db: Database) -> None:
    db["worker_requests"].create(
        {"id": str, "action": str, "provider": str, "requested_by": str, "params": str, "status": str,
         "worker": str, "error": str, "created_at": str, "finished_at": str},
        pk="id",
    )
    db["worker_requests"].create_index(["created_at"])
    db["worker_requests"].create_index(["worker"])
    db["jobs"].add_column("runtime", str)


@migrations()
def m006_job_resources(db: Database) -> None:
    for column in ("request_cpus", "request_memory_mb", "request_disk_mb", "time_limit"):
        db["jobs"].add_column(column, int)


@migrations()
def m007_submission_intents(db: Database) -> None:
    # A job about to be submitted: written before the schedd submit, replaced by its job row
    # after. The tracker never removes as an orphan a job that has either.
    db["submission_intents"].create({"job_id": str, "created_at": str, "pid": int}, pk="job_id")


@migrations()
def m014_job_events_never_reuse_ids(db: Database) -> None:
    """The change stream resumes after an event id, so no id may ever be handed out twice.

    Without AUTOINCREMENT SQLite reuses the largest rowid once its row is deleted (a job
    deleted or expired with the newest events), and a client resuming there would skip the
    new events that took the old ids.
    """
    db.execute(
        "create table job_events_new (id integer primary key autoincrement,"
        " job_id text references jobs(id), state text, reason text, at text)"
    )
    db.execute("insert into job_events_new (id, job_id, state, reason, at)"
               " select id, job_id, state, reason, at from job_events")
    db.execute("drop table job_events")
    db.execute("alter table job_events_new rename to job_events")
    db["job_events"].create_index(["job_id", "id"])


@migrations()
def m015_live_output(db: Database) -> None:
    # The spool folder where a running job's stdout and stderr grow (live output).
    db["jobs"].add_column("live_dir", str)


@migrations()
def m009_worker_requests_lost(db: Database) -> None:
    # When an added worker was found gone from the pool (status 'lost').
    db["worker_requests"].add_column("lost_at", str)


@migrations()
def m016_tes(db: Database) -> None:
    # A GA4GH TES task's own request (name, tags, executors, inputs...), beside its one job;
    # it goes with the job's row.
    db.execute(
        "create table tes_tasks (job_id text primary key references jobs(id) on delete cascade,"
        " tes_name text, tags text, task text, delivery text)"
    )


@migrations()
def m011_audit_refusals(db: Database) -> None:
    # Refused requests are audited too, with the address they came from.
    db["audit"].add_column("client", str)
    db["audit"].create_index(["outcome", "at"])


@migrations()
def m017_dialect_003(db: Database) -> None:
    # The data object a job's answer is written into (seed 003's data2_id), instead of a new one.
    db["jobs"].add_column("answer_into", str)


@migrations()
def m008_spool_charge(db: Database) -> None:
    # What a submission in flight holds against its owner's limits, between the check and
    # the job rows: taken and checked in one transaction, dropped with the rows' insert.
    db["charges"].create(
        {"id": str, "owner": str, "jobs": int, "spool_bytes": int, "created_at": str},
        pk="id", not_null={"owner", "jobs", "spool_bytes", "created_at"},
    )
    db["charges"].create_index(["owner"])
    # Bytes the job's input costs in the schedd's spool (its own copy of every input),
    # and the per-user override of the quota they are charged against.
    db["jobs"].add_column("spool_bytes", int)
    db["user_limits"].add_column("max_spool_bytes", int)


@migrations()
def m020_webhook_secrets(db: Database) -> None:
    # Each user's webhook signing secrets: the current one (valid_until null) and those
    # rotated out, which still sign until valid_until. Stored as they are: signing needs them.
    db["webhook_secrets"].create(
        {"id": str, "owner": str, "secret": str, "created_at": str, "valid_until": str},
        pk="id", not_null={"owner", "secret", "created_at"},
    )
    db.execute("create unique index webhook_secrets_current on webhook_secrets (owner) where valid_until is null")
    db["webhook_secrets"].create_index(["owner", "valid_until"])
    # Consecutive permanent refusals (404, 401, ...) of a notification, and why it stopped
    # (cancelled by its owner, refused by the receiver).
    db["outbox"].add_column("permanent_answers", int, not_null_default=0)
    db["outbox"].add_column("stopped_reason", str)


# The job_tallies triggers: kept by SQLite itself, so no write path can forget them.
JOB_TALLY_TRIGGERS = (
    """create trigger job_tallies_insert after insert on jobs when new.expired_at is null begin
        insert into job_tallies (owner, state, n) values (new.owner, new.state, 1)
            on conflict (owner, state) do update set n = n + 1;
    end""",
    """create trigger job_tallies_delete after delete on jobs when old.expired_at is null begin
        update job_tallies set n = n - 1 where owner = old.owner and state = old.state;
    end""",
    """create trigger job_tallies_update after update of owner, state, expired_at on jobs begin
        update job_tallies set n = n - 1
            where old.expired_at is null and owner = old.owner and state = old.state;
        insert into job_tallies (owner, state, n) select new.owner, new.state, 1 where new.expired_at is null
            on conflict (owner, state) do update set n = n + 1;
    end""",
)


@migrations()
def m024_job_tallies(db: Database) -> None:
    # How many unexpired jobs each owner has in each state, kept by triggers: the total of a
    # job list filtered by owner and state (the usual ones) and the metrics' per-state gauge
    # read these few rows instead of counting every job (linear in the store: 15-20 ms at
    # 100,000 jobs, when the page itself takes 0.1 ms). A later migration that rebuilds the
    # jobs table (sqlite-utils transform) drops the triggers and must create them again;
    # tests/unit/test_store.py checks the tallies after every migration.
    db.execute("create table job_tallies (owner text not null, state text not null, n integer not null,"
               " primary key (owner, state)) without rowid")
    db.execute("insert into job_tallies (owner, state, n) select owner, state, count(*) from jobs"
               " where expired_at is null group by owner, state")
    for trigger in JOB_TALLY_TRIGGERS:
        db.execute(trigger)
    # A state-filtered page walks its state's jobs newest first instead of sorting them all
    # (52 ms for the first page of 80,000 completed jobs, 0.1 ms with this index); the old
    # index on state alone is this one's prefix.
    db["jobs"].create_index(["state", "created_at", "id"])
    db.execute("drop index if exists idx_jobs_state")


@migrations()
def m022_tes_left_queue(db: Database) -> None:
    # When a finished job was last seen gone from the schedd's queue: a removed job stays
    # there (JobStatus 3) until its worker has stopped it (TES calls that CANCELING). Jobs
    # finished before this column are long gone. The index keeps the tracker's per-cycle
    # question (which finished jobs may still be queued?) to the few rows it concerns.
    db["jobs"].add_column("left_queue_at", str)
    db.execute("update jobs set left_queue_at = coalesce(completed_at, updated_at)"
               " where state in ('completed', 'failed', 'removed', 'submission_error')")
    db.execute("create index jobs_not_left_queue on jobs(state) where left_queue_at is null")


@migrations()
def m019_idempotency_keys(db: Database) -> None:
    # A client's Idempotency-Key for one submission, per user: written when the request
    # arrives (state 'processing'), tied to the submission's job ids (with the rows to
    # record should the gateway die after the schedd accepted them) durably with their
    # intents, then holding the answer to replay ('done'); 'recovered' after a restart
    # found the jobs but no answer, which is rebuilt from them on the next retry.
    db["idempotency_keys"].create(
        {"owner": str, "key": str, "fingerprint": str, "state": str, "job_ids": str, "array_id": str,
         "pending": str, "status": int, "headers": str, "body": bytes, "created_at": str, "expires_at": str},
        pk=("owner", "key"), not_null={"fingerprint", "state", "created_at", "expires_at"},
    )
    db["idempotency_keys"].create_index(["expires_at"])


@migrations()
def m021_job_dependencies(db: Database) -> None:
    # The jobs (or arrays) a job waits for, as named at submission, with how: "afterok" (each
    # must complete) or "afterany" (each must end). Kept after the job they name is deleted:
    # a dependency with nothing left to name is one that ended without completing.
    db.execute(
        "create table job_dependencies (job_id text not null references jobs(id) on delete cascade,"
        " after_id text not null, mode text not null, primary key (job_id, after_id))"
    )
    db["job_dependencies"].create_index(["after_id"])
    # 1 while the job's gate in the schedd is closed (GatewayWaiting): the tracker opens it,
    # or removes the job, once its dependencies decide.
    db["jobs"].add_column("awaiting_dependencies", int)


@migrations()
def m018_slot_leases(db: Database) -> None:
    # Seed 000's slot leases: a worker-id reserves a slot until expires_at and is used once,
    # for a job (job_id), an upload (data_id once complete) or a download; status (a core
    # state: running, suspended, completed, removed) and bytes are a transfer's, or 'removed'
    # for a lease given back unused; ended_at marks a lease that holds its slot no more.
    db["slot_leases"].create(
        {"worker_id": str, "owner": str, "created_at": str, "expires_at": str, "used_at": str, "kind": str,
         "job_id": str, "data_id": str, "status": str, "bytes": int, "ended_at": str, "reason": str},
        pk="worker_id", not_null={"owner", "created_at", "expires_at"},
    )
    db["slot_leases"].create_index(["owner"])
    db["slot_leases"].create_index(["ended_at", "expires_at"])


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


class Store:
    def __init__(self, path: Path | str, on_state_change: StateChangeHook | None = None):
        self.path = Path(path)
        self.on_state_change = on_state_change
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _make_private(self.path)
        conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self.db = Database(conn)
        self.db.enable_wal()
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self._lock = threading.RLock()
        self.db.register_function(url_host, name="url_host", deterministic=True)
        with self._lock:
            migrations.apply(self.db)
            self.instance_id = self._ensure_instance_id()
            # What the tracker and sweeps read: every column but the user's words, which can be
            # large and which none of them needs.
            self._tracking_columns = ", ".join(
                c for c in self.db["jobs"].columns_dict if c not in ("arguments", "command"))

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """One atomic unit of work; nested uses join the outer one."""
        with self._lock:
            with self.db.atomic():
                yield self.db

    @contextmanager
    def durable_transaction(self) -> Iterator[Database]:
        """A transaction that survives an OS crash once it returns (synchronous = FULL).

        Elsewhere NORMAL is enough: WAL mode keeps the database consistent, and at worst an
        OS crash forgets the last commits. Not these: a forgotten job row would make the
        tracker take an acknowledged job for an orphan.
        """
        with self._lock:
            outermost = not self.db.conn.in_transaction
            if outermost:
                self.db.execute("PRAGMA synchronous = FULL")
            try:
                with self.db.atomic():
                    yield self.db
            finally:
                if outermost:
                    self.db.execute("PRAGMA synchronous = NORMAL")

    def _ensure_instance_id(self) -> str:
        """A stable id for this gateway, stored in every job ad it submits."""
        rows = list(self.db.query("select value from meta where key = 'instance_id'"))
        if rows:
            return rows[0]["value"]
        value = str(uuid.uuid4())
        self.db["meta"].insert({"key": "instance_id", "value": value})
        return value

    # --- jobs -----------------------------------------------------------------

    def insert_job(self, job: dict[str, Any], reason: str | None = None) -> None:
        self.insert_jobs([job], reason)

    def insert_jobs(self, jobs: list[dict[str, Any]], reason: str | None = None,
                    data_refs: Iterable[tuple[str, str, str]] = (), array: dict[str, Any] | None = None,
                    charge_id: str | None = None, dependencies: Iterable[tuple[str, str, str]] = ()) -> None:
        """Record newly queued jobs (an array's items, its record, the data they use, the jobs
        they wait for as (job id, named id, mode)) at once, durably, replacing their submission
        intents and dropping the charge that held their place against the owner's limits."""
        with self.durable_transaction() as db:
            db.execute(f"delete from submission_intents where job_id in ({','.join('?' * len(jobs))})",
                       [job["id"] for job in jobs])
            if charge_id:
                db.execute("delete from charges where id = ?", [charge_id])
            if array:
                db["job_arrays"].insert(array)
            db["jobs"].insert_all(jobs)
            db["job_events"].insert_all(
                {"job_id": job["id"], "state": job["state"], "reason": reason, "at": job["created_at"]}
                for job in jobs
            )
            db["job_data_refs"].insert_all(
                ({"job_id": j, "data_id": d, "role": r} for j, d, r in data_refs), ignore=True)
            db["job_dependencies"].insert_all(
                {"job_id": j, "after_id": a, "mode": m} for j, a, m in dependencies)
            for job in jobs:
                self._write_outbox(job["id"])

    # --- submission intents -----------------------------------------------------------

    def add_intents(self, job_ids: Iterable[str], pid: int, keyed: "KeyedSubmission | None" = None) -> None:
        """Before the schedd submit, durably: these jobs are being submitted, not orphans;
        with ``keyed``, the client's idempotency key is tied to them in the same commit."""
        now = now_iso()
        job_ids = list(job_ids)
        with self.durable_transaction() as db:
            db["submission_intents"].insert_all(
                ({"job_id": job_id, "created_at": now, "pid": pid} for job_id in job_ids), replace=True)
            if keyed:
                db.execute("update idempotency_keys set job_ids = ?, array_id = ?, pending = ?"
                           " where owner = ? and key = ?",
                           [json.dumps(job_ids), keyed.array_id, json.dumps(keyed.pending), keyed.owner, keyed.key])

    def drop_intents(self, job_ids: Iterable[str]) -> None:
        job_ids = list(job_ids)
        with self.transaction() as db:
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start:start + 500]
                db.execute(f"delete from submission_intents where job_id in ({','.join('?' * len(chunk))})", chunk)

    def intended(self, job_ids: Iterable[str]) -> set[str]:
        """Those of ``job_ids`` that have a submission intent."""
        job_ids = list(job_ids)
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start:start + 500]
                found.update(r[0] for r in self.db.execute(
                    f"select job_id from submission_intents where job_id in ({','.join('?' * len(chunk))})", chunk))
        return found

    def clear_intents(self, keep: Iterable[str] = ()) -> int:
        """At start-up, under the database lock: intents left by a process that died mid-submission
        (but those of ``keep``, submissions whose fate is still to be found out)."""
        keep = list(keep)
        with self.transaction() as db:
            return db.execute(f"delete from submission_intents where job_id not in ({','.join('?' * len(keep))})",
                              keep).rowcount

    # --- idempotency keys -----------------------------------------------------------------

    def claim_idempotency_key(self, owner: str, key: str, fingerprint: str, now: str,
                              expires_at: str) -> dict[str, Any] | None:
        """Take ``key`` for a new submission of ``owner`` (None), or return the row that holds it
        (an expired one is forgotten first). Concurrent claims: exactly one gets None."""
        with self.transaction() as db:
            db.execute("delete from idempotency_keys where owner = ? and key = ? and expires_at <= ?"
                       " and state not in ('processing', 'unsettled')", [owner, key, now])
            taken = db.execute(
                "insert or ignore into idempotency_keys (owner, key, fingerprint, state, created_at, expires_at)"
                " values (?, ?, ?, 'processing', ?, ?)", [owner, key, fingerprint, now, expires_at]).rowcount
            return None if taken else self.idempotency_key(owner, key)

    def idempotency_key(self, owner: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db.query("select * from idempotency_keys where owner = ? and key = ?", [owner, key]))
        return _decode_key(rows[0]) if rows else None

    def finish_idempotency_key(self, owner: str, key: str, status: int, headers: list[tuple[str, str]],
                               body: bytes) -> None:
        """The answer to replay for the key from now on."""
        with self.transaction() as db:
            db.execute("update idempotency_keys set state = 'done', status = ?, headers = ?, body = ?, pending = null"
                       " where owner = ? and key = ?", [status, json.dumps(headers), body, owner, key])

    def mark_idempotency_key(self, owner: str, key: str, state: str) -> None:
        """'recovered': its jobs are recorded but its answer is not (the next retry rebuilds it
        from them); 'unsettled': a restart could not yet tell whether the schedd has them."""
        with self.transaction() as db:
            pending = "pending" if state == "unsettled" else "null"
            db.execute(f"update idempotency_keys set state = ?, pending = {pending} where owner = ? and key = ?",
                       [state, owner, key])

    def release_idempotency_key(self, owner: str, key: str) -> None:
        """Forget the key: the next request with it is a new submission."""
        with self.transaction() as db:
            db.execute("delete from idempotency_keys where owner = ? and key = ?", [owner, key])

    def idempotency_keys_in(self, states: Iterable[str]) -> list[dict[str, Any]]:
        """Keys in these states, oldest first (at start-up, 'processing' ones are those a
        stopped process was answering)."""
        states = list(states)
        with self._lock:
            return [_decode_key(r) for r in self.db.query(
                f"select * from idempotency_keys where state in ({','.join('?' * len(states))})"
                " order by created_at", states)]

    def sweep_idempotency_keys(self, now: str) -> int:
        """Forget keys past their window (not one a request is answering, or a restart settling)."""
        with self.transaction() as db:
            return db.execute("delete from idempotency_keys where expires_at <= ?"
                              " and state not in ('processing', 'unsettled')", [now]).rowcount

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db.query("select * from jobs where id = ?", [job_id]))
        return _decode_job(rows[0]) if rows else None

    def jobs_by_id(self, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Whole rows of these jobs (those that exist), by id."""
        job_ids = list(job_ids)
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start:start + 500]
                for row in self.db.query(f"select * from jobs where id in ({','.join('?' * len(chunk))})", chunk):
                    found[row["id"]] = _decode_job(row)
        return found

    def not_left_queue(self, final_states: Iterable[str]) -> list[str]:
        """Finished jobs not yet seen gone from the schedd's queue."""
        states = list(final_states)
        with self._lock:
            return [r[0] for r in self.db.execute(
                f"select id from jobs where left_queue_at is null and state in ({','.join('?' * len(states))})",
                states)]

    def active_jobs(self, states: Iterable[str]) -> list[dict[str, Any]]:
        """Jobs the tracker still has to follow, in submission order."""
        states = list(states)
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self.db.query(
                f"select {self._tracking_columns} from jobs where state in ({marks}) order by created_at", states
            )
            return [_decode_job(r) for r in rows]

    def list_jobs(
        self, flt: JobFilter, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None, int]:
        """Newest first; returns (page, cursor of the next page or None, total matching)."""
        where, params = _job_filter_sql(flt)
        with self._lock:
            total = self._count_matching(flt, where, params)
            if cursor:
                created_at, job_id = decode_cursor(cursor)
                where.append("(created_at < ? or (created_at = ? and id < ?))")
                params += [created_at, created_at, job_id]
            sql = (
                f"select {SUMMARY_COLUMNS} from jobs where {' and '.join(where) or '1'}"
                " order by created_at desc, id desc limit ?"
            )
            rows = [_decode_job(r) for r in self.db.query(sql, params + [limit + 1])]
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"])
        return rows, next_cursor, total

    def apply_job_changes(self, changes: Iterable[JobChange], data_objects: Iterable[dict[str, Any]] = ()) -> None:
        """Write many jobs' changes, their state events (and answer objects), in one transaction."""
        now = now_iso()
        changes = list(changes)
        with self.transaction() as db:
            db["data_objects"].insert_all(list(data_objects))
            # A job deleted while the tracker looked at it has nothing left to change.
            present = self._existing_job_ids(db, [c.job_id for c in changes])
            for change in changes:
                if change.job_id not in present:
                    continue
                values = dict(change.fields)
                if change.new_state is not None:
                    values["state"] = change.new_state
                    values["state_reason"] = change.reason
                    db["job_events"].insert(
                        {"job_id": change.job_id, "state": change.new_state,
                         "reason": change.reason, "at": now}
                    )
                if not values:
                    continue
                values["updated_at"] = now
                if "arguments" in values:
                    values["arguments"] = json.dumps(values["arguments"])
                db["jobs"].update(change.job_id, values)
                if change.new_state is not None:
                    self._write_outbox(change.job_id)

    @staticmethod
    def _existing_job_ids(db: Database, job_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start:start + 500]
            found.update(r[0] for r in db.execute(
                f"select id from jobs where id in ({','.join('?' * len(chunk))})", chunk))
        return found

    def _write_outbox(self, job_id: str) -> None:
        """Inside the caller's transaction: the notifications a new state calls for."""
        if self.on_state_change is None:
            return
        job = self.get_job(job_id)
        for event in self.on_state_change(job):
            self.db["outbox"].insert({**event, "payload": json.dumps(event["payload"])})

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(
                self.db.query(
                    "select state, reason, at from job_events where job_id = ? order by id",
                    [job_id],
                )
            )

    def changes_after(self, after: int, flt: JobFilter, limit: int) -> list[dict[str, Any]]:
        """State changes with an id above ``after``, oldest first, of the jobs ``flt`` matches.

        ``flt.states`` selects the changes' states (not the jobs' current ones). Ids grow in
        commit order (one writer at a time), so a reader never sees a change before an older one.
        """
        where, params = ["e.id > ?"], [after]
        for column, value in (("j.owner", flt.owner), ("j.array_id", flt.array_id), ("e.job_id", flt.job_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if flt.states:
            where.append(f"e.state in ({','.join('?' * len(flt.states))})")
            params.extend(flt.states)
        with self._lock:
            return list(self.db.query(
                "select e.id, e.job_id, e.state, e.reason, e.at, j.name, j.array_id"
                " from job_events e join jobs j on j.id = e.job_id"
                f" where {' and '.join(where)} order by e.id limit ?", [*params, limit]))

    def last_change_id(self) -> int:
        """The newest state change's id (0 when there is none): where a new stream starts."""
        with self._lock:
            return self.db.execute("select coalesce(max(id), 0) from job_events").fetchone()[0]

    # --- notifications ---------------------------------------------------------------

    def due_notifications(self, now: str, limit: int, exclude: Iterable[str] = (), per_host: int | None = None,
                          busy_hosts: Iterable[str] = (), per_owner: int | None = None,
                          busy_owners: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Pending events due by ``now``, oldest first, each with its job's ``owner``.

        With ``per_host`` / ``per_owner``: at most that many per receiver host and per job
        owner, and none for ``busy_hosts`` / ``busy_owners`` (so one host's or one user's
        backlog cannot fill the page and hide everyone else's events).
        """
        exclude, busy_hosts, busy_owners = list(exclude), list(busy_hosts), list(busy_owners)
        skip = f" and o.id not in ({','.join('?' * len(exclude))})" if exclude else ""
        where, params = ["1"], []
        for column, most, busy in (("host", per_host, busy_hosts), ("owner", per_owner, busy_owners)):
            if most is not None:
                where.append(f"{column}_rank <= ?")
                params.append(most)
            if busy:
                where.append(f"{column} not in ({','.join('?' * len(busy))})")
                params.extend(busy)
        sql = ("select * from (select o.*, coalesce(j.owner, '') as owner, url_host(o.url) as host,"
               " row_number() over (partition by url_host(o.url) order by o.next_attempt_at) as host_rank,"
               " row_number() over (partition by coalesce(j.owner, '') order by o.next_attempt_at) as owner_rank"
               " from outbox o left join jobs j on j.id = o.job_id"
               f" where o.status = 'pending' and o.next_attempt_at <= ?{skip})"
               f" where {' and '.join(where)} order by next_attempt_at limit ?")
        with self._lock:
            rows = [dict(r) for r in self.db.query(sql, [now, *exclude, *params, limit])]
        for row in rows:
            for key in ("host", "host_rank", "owner_rank"):
                row.pop(key, None)
        return rows

    def next_notification_due(self) -> str | None:
        with self._lock:
            return self.db.execute(
                "select min(next_attempt_at) from outbox where status = 'pending'"
            ).fetchone()[0]

    def record_delivery_attempt(
        self, event_id: str, *, at: str, status_code: int | None, error: str | None,
        duration_ms: int, outcome: str, next_attempt_at: str | None = None, url: str | None = None,
        permanent_answers: int = 0, stopped_reason: str | None = None,
    ) -> None:
        """One attempt and its consequence (delivered, retry at a time, or failed) at once.

        The attempt is always logged; its consequence only applies while the event is still
        pending at ``url`` (the URL tried): an owner who cancelled or redirected it while the
        attempt ran has the last word.
        """
        with self.transaction() as db:
            row = db.execute("select status, url from outbox where id = ?", [event_id]).fetchone()
            if row is None:
                return  # its job was deleted while the attempt ran
            db["delivery_attempts"].insert({"event_id": event_id, "at": at, "status_code": status_code,
                                            "error": error, "duration_ms": duration_ms})
            db.execute("update outbox set attempts = attempts + 1 where id = ?", [event_id])
            if row[0] != "pending" or (url is not None and row[1] != url):
                return
            values: dict[str, Any] = {"status": outcome, "last_error": error, "permanent_answers": permanent_answers,
                                      "stopped_reason": stopped_reason}
            if outcome == "delivered":
                values["delivered_at"] = at
            if next_attempt_at:
                values["next_attempt_at"] = next_attempt_at
            db["outbox"].update(event_id, values)

    def job_notifications(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            events = [dict(r) for r in self.db.query(
                "select * from outbox where job_id = ? order by created_at, id", [job_id])]
            for event in events:
                event["payload"] = json.loads(event["payload"])
                event["attempts_log"] = list(self.db.query(
                    "select at, status_code, error, duration_ms from delivery_attempts"
                    " where event_id = ? order by id", [event["id"]]))
            return events

    def notification_summary(self, job_id: str, recent: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """A job's notifications in brief: how many in each status, and the ``recent`` newest
        (oldest of them first), without their bodies or attempt logs."""
        with self._lock:
            counts = {status: n for status, n in self.db.execute(
                "select status, count(*) from outbox where job_id = ? group by status", [job_id])}
            rows = [dict(r) for r in self.db.query(
                "select id, event_type, url, status, attempts, created_at, next_attempt_at, delivered_at,"
                " last_error, stopped_reason from outbox where job_id = ?"
                " order by created_at desc, id desc limit ?", [job_id, recent])]
        return counts, rows[::-1]

    def get_notification(self, job_id: str, event_id: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db.query("select * from outbox where id = ? and job_id = ?", [event_id, job_id]))
        return dict(rows[0]) if rows else None

    def requeue_notification(self, job_id: str, event_id: str, now: str) -> bool:
        """Send an event again (same id, so receivers still dedupe); False if unknown."""
        with self.transaction() as db:
            cursor = db.execute(
                "update outbox set status = 'pending', next_attempt_at = ?, last_error = null,"
                " permanent_answers = 0, stopped_reason = null"
                " where id = ? and job_id = ?", [now, event_id, job_id])
            return cursor.rowcount == 1

    def cancel_notification(self, job_id: str, event_id: str, reason: str) -> str | None:
        """Stop a pending event for good. Returns its status before (only 'pending' ones are
        cancelled), or None when the job has no such event."""
        with self.transaction() as db:
            row = db.execute("select status from outbox where id = ? and job_id = ?", [event_id, job_id]).fetchone()
            if row is None:
                return None
            if row[0] == "pending":
                db.execute("update outbox set status = 'cancelled', stopped_reason = ? where id = ?",
                           [reason, event_id])
            return row[0]

    def redirect_notification(self, job_id: str, event_id: str, url: str, now: str) -> str | None:
        """Point a pending (or stopped: failed) event at a new URL and make it due now; the job's
        later notifications follow when it was the job's URL. Returns the event's status
        before (delivered and cancelled ones are left alone), or None when it is unknown."""
        with self.transaction() as db:
            row = db.execute("select status, url from outbox where id = ? and job_id = ?",
                             [event_id, job_id]).fetchone()
            if row is None:
                return None
            if row[0] in ("pending", "failed"):
                db.execute(
                    "update outbox set url = ?, status = 'pending', next_attempt_at = ?, last_error = null,"
                    " permanent_answers = 0, stopped_reason = null where id = ?", [url, now, event_id])
                db.execute("update jobs set notification_url = ?, updated_at = ? where id = ? and notification_url = ?",
                           [url, now, job_id, row[1]])
            return row[0]

    # --- webhook signing secrets ---------------------------------------------------------

    def webhook_secrets(self, owner: str, now: str, make_secret: Callable[[], str]) -> list[dict[str, Any]]:
        """The owner's secrets that sign now: the current one first (made with ``make_secret``
        when the owner has none yet), then those rotated out whose overlap has not ended."""
        with self.transaction() as db:
            db.execute("delete from webhook_secrets where owner = ? and valid_until <= ?", [owner, now])
            if db.execute("select 1 from webhook_secrets where owner = ? and valid_until is null",
                          [owner]).fetchone() is None:
                db["webhook_secrets"].insert({"id": str(uuid.uuid4()), "owner": owner, "secret": make_secret(),
                                              "created_at": now, "valid_until": None})
            return [dict(r) for r in db.query(
                "select secret, created_at, valid_until from webhook_secrets where owner = ?"
                " order by valid_until is not null, valid_until desc, created_at desc", [owner])]

    def rotate_webhook_secret(self, owner: str, now: str, old_valid_until: str,
                              make_secret: Callable[[], str]) -> list[dict[str, Any]]:
        """Replace the owner's current secret with a new one; the old one signs until
        ``old_valid_until``. Returns the secrets that sign now, as ``webhook_secrets``."""
        with self.transaction() as db:
            db.execute("update webhook_secrets set valid_until = ? where owner = ? and valid_until is null",
                       [old_valid_until, owner])
            db["webhook_secrets"].insert({"id": str(uuid.uuid4()), "owner": owner, "secret": make_secret(),
                                          "created_at": now, "valid_until": None})
            return self.webhook_secrets(owner, now, make_secret)

    def usage(self, owner: str, active_states: Iterable[str], since: str) -> dict[str, Any]:
        """What the owner holds now: active jobs, submissions since a time (creation times,
        oldest first) and spool bytes of active jobs, each with what charges in flight add."""
        states = list(active_states)
        marks = ",".join("?" * len(states))
        with self._lock:
            active, spool = self.db.execute(
                f"select count(*), coalesce(sum(spool_bytes), 0) from jobs where owner = ? and state in ({marks})",
                [owner, *states]).fetchone()
            charged_jobs, charged_bytes = self.db.execute(
                "select coalesce(sum(jobs), 0), coalesce(sum(spool_bytes), 0) from charges where owner = ?",
                [owner]).fetchone()
            return {"active_jobs": active + charged_jobs, "recent": self.submissions_since(owner, since),
                    "charged_jobs": charged_jobs, "spool_bytes": spool + charged_bytes}

    def take_charge(self, owner: str, jobs: int, spool_bytes: int, active_states: Iterable[str], since: str,
                    decide: Callable[[dict[str, Any]], None]) -> str:
        """Check and hold a submission's place at once: ``decide`` sees the owner's usage
        (as ``usage``) and raises to refuse; otherwise a charge is recorded and its id returned.
        Concurrent submissions see each other's charges, so a limit cannot be overshot."""
        with self.transaction() as db:
            decide(self.usage(owner, active_states, since))
            charge_id = str(uuid.uuid4())
            db["charges"].insert({"id": charge_id, "owner": owner, "jobs": jobs, "spool_bytes": spool_bytes,
                                  "created_at": now_iso()})
            return charge_id

    def release_charge(self, charge_id: str) -> None:
        """Drop a charge (a no-op once the jobs it held were recorded)."""
        with self.transaction() as db:
            db.execute("delete from charges where id = ?", [charge_id])

    def clear_charges(self) -> int:
        """At start-up: charges a stopped gateway left behind hold nothing any more."""
        with self.transaction() as db:
            return db.execute("delete from charges").rowcount

    def submissions_since(self, owner: str, since: str) -> list[str]:
        """Creation times of the owner's jobs since a time, oldest first."""
        with self._lock:
            return [r[0] for r in self.db.execute(
                "select created_at from jobs where owner = ? and created_at >= ? order by created_at",
                [owner, since],
            )]

    # --- data objects ---------------------------------------------------------------------

    def insert_data(self, row: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["data_objects"].insert(row)

    def get_data(self, data_id: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db.query("select * from data_objects where id = ?", [data_id]))
        return rows[0] if rows else None

    def list_data(self, owner: str | None, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        where, params = ("where owner = ?", [owner]) if owner else ("", [])
        with self._lock:
            total = self.db.execute(f"select count(*) from data_objects {where}", params).fetchone()[0]
            rows = list(self.db.query(
                f"select * from data_objects {where} order by created_at desc, id desc limit ? offset ?",
                [*params, limit, offset]))
        return rows, total

    def update_data(self, data_id: str, values: dict[str, Any], expected_sha256: str | None = None) -> bool:
        """Replace metadata; with ``expected_sha256``, only if the content did not change meanwhile."""
        with self.transaction() as db:
            if expected_sha256 is not None:
                current = db.execute("select sha256 from data_objects where id = ?", [data_id]).fetchone()
                if current is None or current[0] != expected_sha256:
                    return False
            db["data_objects"].update(data_id, values)
            return True

    def delete_data(self, data_id: str) -> None:
        with self.transaction() as db:
            db.execute("delete from data_objects where id = ?", [data_id])

    def jobs_using_data(self, data_id: str, states: Iterable[str]) -> list[str]:
        states = list(states)
        with self._lock:
            return [r[0] for r in self.db.execute(
                "select distinct r.job_id from job_data_refs r join jobs j on j.id = r.job_id"
                f" where r.data_id = ? and j.state in ({','.join('?' * len(states))})",
                [data_id, *states])]

    def job_data_refs(self, job_id: str) -> dict[str, list[str]]:
        """The data objects a job uses, by role (bundle, input, binary, input_file, answer)."""
        refs: dict[str, list[str]] = {}
        with self._lock:
            for data_id, role in self.db.execute(
                    "select data_id, role from job_data_refs where job_id = ? order by rowid", [job_id]):
                refs.setdefault(role, []).append(data_id)
        return refs

    def jobs_answering_into(self, states: Iterable[str]) -> list[dict[str, Any]]:
        """Jobs in these states whose answer goes into a given data object, oldest first."""
        states = list(states)
        with self._lock:
            return [_decode_job(r) for r in self.db.query(
                "select * from jobs where answer_into is not null"
                f" and state in ({','.join('?' * len(states))}) order by created_at, id", states)]

    def expired_data(self, now: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db.query(
                "select * from data_objects where expires_at is not null and expires_at <= ?", [now]))

    # --- dependencies ----------------------------------------------------------------------

    def dependencies_of(self, job_ids: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
        """job id -> the (named id, mode) pairs it waits for, in the order they were named."""
        job_ids = list(job_ids)
        found: dict[str, list[tuple[str, str]]] = {}
        with self._lock:
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start:start + 500]
                for job_id, after_id, mode in self.db.execute(
                        "select job_id, after_id, mode from job_dependencies"
                        f" where job_id in ({','.join('?' * len(chunk))}) order by rowid", chunk):
                    found.setdefault(job_id, []).append((after_id, mode))
        return found

    def dependency_targets(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """What each id names: a job (its own row) or an array (its items), as
        ``{"owner", "array": bool, "items": [(job id, state), ...]}``; unknown ids are absent."""
        ids = list(dict.fromkeys(ids))
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(ids), 250):
                chunk = ids[start:start + 250]
                marks = ",".join("?" * len(chunk))
                for named, owner, job_id, state, is_array in self.db.execute(
                        f"select id, owner, id, state, 0 from jobs where id in ({marks})"
                        f" union all select array_id, owner, id, state, 1 from jobs where array_id in ({marks})"
                        " order by 5, 1, 3", chunk + chunk):
                    target = found.setdefault(named, {"owner": owner, "array": bool(is_array), "items": []})
                    target["items"].append((job_id, state))
        return found

    # --- arrays and expiry -------------------------------------------------------------------

    def get_array(self, array_id: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db.query("select * from job_arrays where id = ?", [array_id]))
        return rows[0] if rows else None

    def array_items(self, array_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [_decode_job(r) for r in self.db.query(
                f"select {SUMMARY_COLUMNS} from jobs where array_id = ? order by proc_id", [array_id])]

    def jobs_past_expiry(self, now: str) -> list[dict[str, Any]]:
        with self._lock:
            return [_decode_job(r) for r in self.db.query(
                f"select {self._tracking_columns} from jobs"
                " where expired_at is null and expires_at is not null and expires_at <= ?", [now])]

    def mark_expired(self, job_id: str, at: str) -> None:
        """Keep a tombstone (so the id answers 410), drop what the job no longer needs."""
        with self.transaction() as db:
            db.execute("update jobs set expired_at = ?, updated_at = ? where id = ?", [at, at, job_id])
            db.execute("delete from job_data_refs where job_id = ?", [job_id])

    def finished_before(self, final_states: Iterable[str], before: str) -> list[dict[str, Any]]:
        """Finished, not yet expired jobs completed before a time (default retention)."""
        states = list(final_states)
        with self._lock:
            return [_decode_job(r) for r in self.db.query(
                f"select {self._tracking_columns} from jobs"
                f" where expired_at is null and state in ({','.join('?' * len(states))})"
                " and coalesce(completed_at, updated_at) < ?", [*states, before])]

    # --- worker requests ----------------------------------------------------------------

    def insert_worker_request(self, row: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["worker_requests"].insert({**row, "params": json.dumps(row.get("params") or {})})

    def update_worker_request(self, request_id: str, values: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["worker_requests"].update(request_id, values)

    def worker_requests(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = [dict(r) for r in self.db.query(
                "select * from worker_requests order by created_at desc limit ?", [limit])]
        for row in rows:
            row["params"] = json.loads(row["params"] or "{}")
        return rows

    def worker_request(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            rows = [dict(r) for r in self.db.query("select * from worker_requests where id = ?", [request_id])]
        for row in rows:
            row["params"] = json.loads(row["params"] or "{}")
        return rows[0] if rows else None

    def fail_unfinished_worker_requests(self, at: str) -> int:
        """Requests a stopped gateway left running: their outcome is unknown, say so."""
        with self.transaction() as db:
            return db.execute(
                "update worker_requests set status = 'failed', finished_at = ?,"
                " error = 'the gateway stopped before the request finished; check /workers and retry'"
                " where status = 'running'", [at]).rowcount

    def provisioned_worker(self, worker: str) -> dict[str, Any] | None:
        """The request that started ``worker``, if the gateway started it and has not retired it
        (it may be lost: gone from the pool, still the gateway's to retire)."""
        with self._lock:
            rows = list(self.db.query(
                "select * from worker_requests where worker = ? and action = 'provision'"
                " and status in ('ready', 'lost') order by created_at desc limit 1", [worker]))
        return rows[0] if rows else None

    def added_workers(self) -> list[dict[str, Any]]:
        """Provision requests whose worker the gateway still holds: ready or lost."""
        with self._lock:
            return [dict(r) for r in self.db.query(
                "select * from worker_requests where action = 'provision' and status in ('ready', 'lost')"
                " order by created_at")]

    # --- tokens, limits, audit ------------------------------------------------------------

    def insert_token(self, token: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["api_tokens"].insert(token)

    def token_by_hash(self, token_hash: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db.query("select * from api_tokens where token_hash = ?", [token_hash]))
        return rows[0] if rows else None

    def touch_token(self, token_id: str, at: str) -> None:
        with self.transaction() as db:
            db.execute("update api_tokens set last_used_at = ? where id = ?", [at, token_id])

    def list_tokens(self, owner: str | None = None) -> list[dict[str, Any]]:
        where, params = ("where owner = ?", [owner]) if owner else ("", [])
        with self._lock:
            return [
                {k: v for k, v in row.items() if k != "token_hash"}
                for row in self.db.query(f"select * from api_tokens {where} order by created_at", params)
            ]

    def revoke_token(self, token_id: str, at: str) -> bool:
        with self.transaction() as db:
            cursor = db.execute(
                "update api_tokens set revoked_at = ? where id = ? and revoked_at is null", [at, token_id])
            return cursor.rowcount == 1

    def user_limits(self, owner: str) -> dict[str, Any]:
        with self._lock:
            rows = list(self.db.query("select * from user_limits where owner = ?", [owner]))
        return rows[0] if rows else {}

    def set_user_limits(self, owner: str, limits: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["user_limits"].upsert({"owner": owner, **limits}, pk="owner")

    def append_audit(self, entry: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["audit"].insert(entry)

    def audit_entries(self, actor: str | None, action: str | None, since: str | None, limit: int,
                      outcome: str | None = None) -> list[dict[str, Any]]:
        where, params = [], []
        for column, value in (("actor", actor), ("action", action), ("outcome", outcome)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if since:
            where.append("at >= ?")
            params.append(since)
        clause = f"where {' and '.join(where)}" if where else ""
        with self._lock:
            return list(self.db.query(f"select * from audit {clause} order by id desc limit ?", [*params, limit]))

    def delete_job(self, job_id: str) -> None:
        """The job's record and every row that hangs off it: events, notifications, data references."""
        with self.transaction() as db:
            db.execute("delete from job_data_refs where job_id = ?", [job_id])
            db.execute("delete from job_dependencies where job_id = ?", [job_id])
            db.execute("delete from delivery_attempts where event_id in (select id from outbox where job_id = ?)", [job_id])
            db.execute("delete from outbox where job_id = ?", [job_id])
            db.execute("delete from job_events where job_id = ?", [job_id])
            db.execute("delete from jobs where id = ?", [job_id])

    def add_tes_task(self, job_id: str, name: str | None, tags: dict[str, str], task: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["tes_tasks"].insert({"job_id": job_id, "tes_name": name, "tags": json.dumps(tags),
                                    "task": json.dumps(task)})

    def tes_tasks(self, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored TES requests of these jobs, by job id (jobs that are no task are absent),
        each with ``_delivery``: what became of its outputs (None until delivered)."""
        job_ids = list(job_ids)
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start:start + 500]
                for row in self.db.query(
                        f"select job_id, task, delivery from tes_tasks where job_id in ({','.join('?' * len(chunk))})",
                        chunk):
                    found[row["job_id"]] = {**json.loads(row["task"]),
                                            "_delivery": json.loads(row["delivery"]) if row["delivery"] else None}
        return found

    def tes_tasks_awaiting_delivery(self, completed: str) -> list[str]:
        """The TES tasks with outputs whose job is ``completed`` and whose delivery is not
        recorded yet, oldest first."""
        with self._lock:
            return [r[0] for r in self.db.execute(
                "select t.job_id from tes_tasks t join jobs j on j.id = t.job_id"
                " where t.delivery is null and json_extract(t.task, '$._outputs') is not null"
                " and j.state = ? order by j.completed_at, j.id",
                [completed])]

    def set_tes_delivery(self, job_id: str, delivery: dict[str, Any]) -> None:
        """Record what became of a task's outputs (nothing, if the task was deleted meanwhile)."""
        with self.transaction() as db:
            db.execute("update tes_tasks set delivery = ? where job_id = ?", [json.dumps(delivery), job_id])

    def known_job_dirs(self) -> set[str]:
        with self._lock:
            return {r["job_dir"] for r in self.db.query("select job_dir from jobs") if r["job_dir"]}

    def _count_matching(self, flt: JobFilter, where: list[str], params: list[Any]) -> int:
        """How many unexpired jobs match: from the tallies when only owner and states filter."""
        if flt == JobFilter(owner=flt.owner, states=flt.states):
            tally_where, tally_params = ["1"], []
            if flt.owner is not None:
                tally_where.append("owner = ?")
                tally_params.append(flt.owner)
            if flt.states:
                tally_where.append(f"state in ({','.join('?' * len(flt.states))})")
                tally_params.extend(flt.states)
            return self.db.execute(f"select coalesce(sum(n), 0) from job_tallies where {' and '.join(tally_where)}",
                                   tally_params).fetchone()[0]
        return self.db.execute(f"select count(*) from jobs where {' and '.join(where)}", params).fetchone()[0]

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            return {state: n for state, n in self.db.execute(
                "select state, sum(n) from job_tallies group by state having sum(n) > 0")}

    def count_jobs(self) -> int:
        with self._lock:
            return self.db.execute("select count(*) from jobs").fetchone()[0]

    # --- slot leases (seed 000) -------------------------------------------------------------

    def lease_usage(self, now: str, active_states: Iterable[str], queued_states: Iterable[str]) -> dict[str, int]:
        """``active``: leases holding a slot (unused and unexpired, claimed by a submission in
        flight, bound to a job in ``active_states``, or a transfer under way); ``unused``: the
        unused unexpired ones; ``queued``: those used for a job the pool has not started
        (in flight, or a job in ``queued_states``). An expired unused lease is in none: it
        frees its slot by itself."""
        active, queued = list(active_states), list(queued_states)
        a, q = ",".join("?" * len(active)), ",".join("?" * len(queued))
        with self._lock:
            row = self.db.execute(
                "select"
                " coalesce(sum(case when l.used_at is null or (l.kind = 'job' and l.job_id is null) then 1"
                f"  when l.kind = 'job' and j.state in ({a}) then 1"
                "  when l.kind != 'job' and l.status in ('running', 'suspended') then 1 else 0 end), 0),"
                " coalesce(sum(case when l.used_at is null then 1 else 0 end), 0),"
                " coalesce(sum(case when l.kind = 'job' and (l.job_id is null"
                f"  or j.state in ({q})) then 1 else 0 end), 0)"
                " from slot_leases l left join jobs j on j.id = l.job_id"
                " where l.ended_at is null and (l.used_at is not null or l.expires_at > ?)",
                [*active, *queued, now]).fetchone()
        return {"active": row[0], "unused": row[1], "queued": row[2]}

    def grant_lease(self, row: dict[str, Any], active_states: Iterable[str], queued_states: Iterable[str],
                    decide: Callable[[dict[str, int]], None]) -> None:
        """Check and record a lease at once: ``decide`` sees ``lease_usage`` and raises to
        refuse, so concurrent requests cannot lease more slots than there are."""
        with self.transaction() as db:
            decide(self.lease_usage(row["created_at"], active_states, queued_states))
            db["slot_leases"].insert(row)

    def get_lease(self, worker_id: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db.query("select * from slot_leases where worker_id = ?", [worker_id]))
        return rows[0] if rows else None

    def claim_lease(self, worker_id: str, owner: str, kind: str, now: str, status: str | None = None) -> bool:
        """Use the lease once: True for the one caller that finds it unused and unexpired."""
        with self.transaction() as db:
            return db.execute(
                "update slot_leases set used_at = ?, kind = ?, status = ?, bytes = 0 where worker_id = ?"
                " and owner = ? and used_at is null and ended_at is null and expires_at > ?",
                [now, kind, status, worker_id, owner, now]).rowcount == 1

    def unclaim_lease(self, worker_id: str) -> None:
        """A refused submission gives its lease back (still single-use, still expiring)."""
        with self.transaction() as db:
            db.execute("update slot_leases set used_at = null, kind = null, status = null, bytes = null"
                       " where worker_id = ? and job_id is null and data_id is null", [worker_id])

    def update_lease(self, worker_id: str, values: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["slot_leases"].update(worker_id, values)

    def end_unfinished_slot_work(self, now: str) -> int:
        """At start-up: transfers a stopped gateway was carrying are terminated (their
        connection is gone), and leases claimed by a submission that never recorded its job
        are given back. Returns how many leases changed."""
        with self.transaction() as db:
            ended = db.execute(
                "update slot_leases set status = 'removed', ended_at = ?,"
                " reason = 'the gateway stopped during the transfer' where kind in ('upload', 'download')"
                " and status in ('running', 'suspended')", [now]).rowcount
            return ended + db.execute(
                "update slot_leases set used_at = null, kind = null, status = null, bytes = null"
                " where kind = 'job' and job_id is null").rowcount

    def delete_expired_leases(self, before: str) -> int:
        """Forget unused leases that expired before a time (they hold nothing either way)."""
        with self.transaction() as db:
            return db.execute("delete from slot_leases where used_at is null and expires_at < ?", [before]).rowcount


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
