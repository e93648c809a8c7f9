"""The schema, as sqlite-utils migrations applied in definition order (the numbers are names,
not order: a migration is appended after the last one, whatever its number).

tests/unit/test_store.py checks that every m0NN_ function here is registered.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations


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


# The job_tallies triggers as m024_job_tallies made them (counts only); m025 replaces them.
_COUNT_ONLY_TALLY_TRIGGERS = (
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

# The job_tallies triggers (count and spool bytes): kept by SQLite itself, so no write path
# can forget them.
JOB_TALLY_TRIGGERS = (
    """create trigger job_tallies_insert after insert on jobs when new.expired_at is null begin
        insert into job_tallies (owner, state, n, spool_bytes)
            values (new.owner, new.state, 1, coalesce(new.spool_bytes, 0))
            on conflict (owner, state) do update set n = n + 1, spool_bytes = spool_bytes + excluded.spool_bytes;
    end""",
    """create trigger job_tallies_delete after delete on jobs when old.expired_at is null begin
        update job_tallies set n = n - 1, spool_bytes = spool_bytes - coalesce(old.spool_bytes, 0)
            where owner = old.owner and state = old.state;
    end""",
    """create trigger job_tallies_update after update of owner, state, expired_at, spool_bytes on jobs begin
        update job_tallies set n = n - 1, spool_bytes = spool_bytes - coalesce(old.spool_bytes, 0)
            where old.expired_at is null and owner = old.owner and state = old.state;
        insert into job_tallies (owner, state, n, spool_bytes)
            select new.owner, new.state, 1, coalesce(new.spool_bytes, 0) where new.expired_at is null
            on conflict (owner, state) do update set n = n + 1, spool_bytes = spool_bytes + excluded.spool_bytes;
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
    for trigger in _COUNT_ONLY_TALLY_TRIGGERS:
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


@migrations()
def m025_job_spool_tallies(db: Database) -> None:
    # The spool bytes of each owner's unexpired jobs per state beside their count: a
    # submission's quota check (Store.usage) summed spool_bytes over every active job of its
    # owner (1.8 ms at 10,000 queued jobs, per submission); it reads these few rows instead.
    db.execute("alter table job_tallies add column spool_bytes integer not null default 0")
    db.execute("update job_tallies set spool_bytes = (select coalesce(sum(spool_bytes), 0) from jobs"
               " where jobs.owner = job_tallies.owner and jobs.state = job_tallies.state and expired_at is null)")
    for trigger in ("job_tallies_insert", "job_tallies_delete", "job_tallies_update"):
        db.execute(f"drop trigger {trigger}")
    for trigger in JOB_TALLY_TRIGGERS:
        db.execute(trigger)
