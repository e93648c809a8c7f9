"""Jobs, their submission intents, state events and change feed, arrays, dependencies, expiry and
counts: the jobs, job_events, submission_intents, arrays, job_dependencies and job_tallies tables.

A part of ``Store`` (store/__init__.py): its methods share the store's connections and transactions.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from sqlite_utils import Database

from ..timefmt import now_iso
from .records import (SUMMARY_COLUMNS, JobChange, JobFilter, KeyedSubmission, decode_cursor, encode_cursor,
                      _decode_job, _job_filter_sql)


class JobQueries:
    def insert_job(self, job: dict[str, Any], reason: str | None = None) -> None:
        self.insert_jobs([job], reason)

    def insert_jobs(self, jobs: list[dict[str, Any]], reason: str | None = None,
                    data_refs: Iterable[tuple[str, str, str]] = (), array: dict[str, Any] | None = None,
                    charge_id: str | None = None, dependencies: Iterable[tuple[str, str, str]] = ()) -> None:
        """Record newly queued jobs (an array's items, its record, the data they use, the jobs
        they wait for as (job id, named id, mode)) at once, durably, replacing their submission
        intents and dropping the charge that held their place against the owner's limits."""
        def record(db: Database) -> None:
            db.execute(f"delete from submission_intents where job_id in ({','.join('?' * len(jobs))})",
                       [job["id"] for job in jobs])
            if charge_id:
                db.execute("delete from charges where id = ?", [charge_id])
            if array:
                self._insert_rows("job_arrays", [array])
            self._insert_rows("jobs", jobs)
            self._insert_rows("job_events", (
                {"job_id": job["id"], "state": job["state"], "reason": reason, "at": job["created_at"]}
                for job in jobs))
            self._insert_rows("job_data_refs", ({"job_id": j, "data_id": d, "role": r} for j, d, r in data_refs),
                              "insert or ignore")
            self._insert_rows("job_dependencies",
                              ({"job_id": j, "after_id": a, "mode": m} for j, a, m in dependencies))
            for job in jobs:
                self._write_outbox(job["id"])

        self.durably(record)

    def add_intents(self, job_ids: Iterable[str], pid: int, keyed: "KeyedSubmission | None" = None) -> None:
        """Before the schedd submit, durably: these jobs are being submitted, not orphans;
        with ``keyed``, the client's idempotency key is tied to them in the same commit."""
        now = now_iso()
        job_ids = list(job_ids)
        def intend(db: Database) -> None:
            self._insert_rows("submission_intents",
                              ({"job_id": job_id, "created_at": now, "pid": pid} for job_id in job_ids),
                              "insert or replace")
            if keyed:
                db.execute("update idempotency_keys set job_ids = ?, array_id = ?, pending = ?"
                           " where owner = ? and key = ?",
                           [json.dumps(job_ids), keyed.array_id, json.dumps(keyed.pending), keyed.owner, keyed.key])

        self.durably(intend)

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
        with self._reading() as db:
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start:start + 500]
                found.update(r[0] for r in db.execute(
                    f"select job_id from submission_intents where job_id in ({','.join('?' * len(chunk))})", chunk))
        return found

    def clear_intents(self, keep: Iterable[str] = ()) -> int:
        """At start-up, under the database lock: intents left by a process that died mid-submission
        (but those of ``keep``, submissions whose fate is still to be found out)."""
        keep = list(keep)
        with self.transaction() as db:
            return db.execute(f"delete from submission_intents where job_id not in ({','.join('?' * len(keep))})",
                              keep).rowcount

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self._reading() as db:
            rows = list(db.query("select * from jobs where id = ?", [job_id]))
        return _decode_job(rows[0]) if rows else None

    def jobs_by_id(self, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Whole rows of these jobs (those that exist), by id."""
        job_ids = list(job_ids)
        found: dict[str, dict[str, Any]] = {}
        with self._reading() as db:
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start:start + 500]
                for row in db.query(f"select * from jobs where id in ({','.join('?' * len(chunk))})", chunk):
                    found[row["id"]] = _decode_job(row)
        return found

    def not_left_queue(self, final_states: Iterable[str]) -> list[str]:
        """Finished jobs not yet seen gone from the schedd's queue."""
        states = list(final_states)
        with self._reading() as db:
            return [r[0] for r in db.execute(
                f"select id from jobs where left_queue_at is null and state in ({','.join('?' * len(states))})",
                states)]

    def active_jobs(self, states: Iterable[str]) -> list[dict[str, Any]]:
        """Jobs the tracker still has to follow, in submission order."""
        states = list(states)
        marks = ",".join("?" * len(states))
        with self._reading() as db:
            rows = db.query(
                f"select {self._tracking_columns} from jobs where state in ({marks}) order by created_at", states
            )
            return [_decode_job(r) for r in rows]

    def list_jobs(
        self, flt: JobFilter, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None, int]:
        """Newest first; returns (page, cursor of the next page or None, total matching)."""
        where, params = _job_filter_sql(flt)
        with self._reading() as db:
            total = self._count_matching(db, flt, where, params)
            if cursor:
                created_at, job_id = decode_cursor(cursor)
                where.append("(created_at < ? or (created_at = ? and id < ?))")
                params += [created_at, created_at, job_id]
            sql = (
                f"select {SUMMARY_COLUMNS} from jobs where {' and '.join(where) or '1'}"
                " order by created_at desc, id desc limit ?"
            )
            rows = [_decode_job(r) for r in db.query(sql, params + [limit + 1])]
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
            self._insert_rows("outbox", [{**event, "payload": json.dumps(event["payload"])}])

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        with self._reading() as db:
            return list(
                db.query(
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
        with self._reading() as db:
            return list(db.query(
                "select e.id, e.job_id, e.state, e.reason, e.at, j.name, j.array_id"
                " from job_events e join jobs j on j.id = e.job_id"
                f" where {' and '.join(where)} order by e.id limit ?", [*params, limit]))

    def last_change_id(self) -> int:
        """The newest state change's id (0 when there is none): where a new stream starts."""
        with self._reading() as db:
            return db.execute("select coalesce(max(id), 0) from job_events").fetchone()[0]

    def dependencies_of(self, job_ids: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
        """job id -> the (named id, mode) pairs it waits for, in the order they were named."""
        job_ids = list(job_ids)
        found: dict[str, list[tuple[str, str]]] = {}
        with self._reading() as db:
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start:start + 500]
                for job_id, after_id, mode in db.execute(
                        "select job_id, after_id, mode from job_dependencies"
                        f" where job_id in ({','.join('?' * len(chunk))}) order by rowid", chunk):
                    found.setdefault(job_id, []).append((after_id, mode))
        return found

    def dependency_targets(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """What each id names: a job (its own row) or an array (its items), as
        ``{"owner", "array": bool, "items": [(job id, state), ...]}``; unknown ids are absent."""
        ids = list(dict.fromkeys(ids))
        found: dict[str, dict[str, Any]] = {}
        with self._reading() as db:
            for start in range(0, len(ids), 250):
                chunk = ids[start:start + 250]
                marks = ",".join("?" * len(chunk))
                for named, owner, job_id, state, is_array in db.execute(
                        f"select id, owner, id, state, 0 from jobs where id in ({marks})"
                        f" union all select array_id, owner, id, state, 1 from jobs where array_id in ({marks})"
                        " order by 5, 1, 3", chunk + chunk):
                    target = found.setdefault(named, {"owner": owner, "array": bool(is_array), "items": []})
                    target["items"].append((job_id, state))
        return found

    def get_array(self, array_id: str) -> dict[str, Any] | None:
        with self._reading() as db:
            rows = list(db.query("select * from job_arrays where id = ?", [array_id]))
        return rows[0] if rows else None

    def array_items(self, array_id: str) -> list[dict[str, Any]]:
        with self._reading() as db:
            return [_decode_job(r) for r in db.query(
                f"select {SUMMARY_COLUMNS} from jobs where array_id = ? order by proc_id", [array_id])]

    def jobs_past_expiry(self, now: str) -> list[dict[str, Any]]:
        with self._reading() as db:
            return [_decode_job(r) for r in db.query(
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
        with self._reading() as db:
            return [_decode_job(r) for r in db.query(
                f"select {self._tracking_columns} from jobs"
                f" where expired_at is null and state in ({','.join('?' * len(states))})"
                " and coalesce(completed_at, updated_at) < ?", [*states, before])]

    def delete_job(self, job_id: str) -> None:
        """The job's record and every row that hangs off it: events, notifications, data references."""
        with self.transaction() as db:
            db.execute("delete from job_data_refs where job_id = ?", [job_id])
            db.execute("delete from job_dependencies where job_id = ?", [job_id])
            db.execute("delete from delivery_attempts where event_id in (select id from outbox where job_id = ?)", [job_id])
            db.execute("delete from outbox where job_id = ?", [job_id])
            db.execute("delete from job_events where job_id = ?", [job_id])
            db.execute("delete from jobs where id = ?", [job_id])

    def known_job_dirs(self) -> set[str]:
        with self._reading() as db:
            return {r["job_dir"] for r in db.query("select job_dir from jobs") if r["job_dir"]}

    @staticmethod
    def _count_matching(db: Database, flt: JobFilter, where: list[str], params: list[Any]) -> int:
        """How many unexpired jobs match: from the tallies when only owner and states filter."""
        if flt == JobFilter(owner=flt.owner, states=flt.states):
            # The filter's own conditions on owner and state, but the first ("expired_at is
            # null"): the tallies count unexpired jobs only.
            tally_where = where[1:] or ["1"]
            return db.execute(f"select coalesce(sum(n), 0) from job_tallies where {' and '.join(tally_where)}",
                                   params).fetchone()[0]
        return db.execute(f"select count(*) from jobs where {' and '.join(where)}", params).fetchone()[0]

    def count_by_state(self) -> dict[str, int]:
        with self._reading() as db:
            return {state: n for state, n in db.execute(
                "select state, sum(n) from job_tallies group by state having sum(n) > 0")}

    def count_jobs(self) -> int:
        with self._reading() as db:
            return db.execute("select count(*) from jobs").fetchone()[0]
