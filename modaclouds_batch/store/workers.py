"""Worker requests (the pool's capacity changes) and seed 000's slot leases (worker_requests,
slot_leases).

A part of ``Store`` (store/__init__.py): its methods share the store's connections and transactions.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable





class WorkerQueries:
    def insert_worker_request(self, row: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["worker_requests"].insert({**row, "params": json.dumps(row.get("params") or {})})

    def update_worker_request(self, request_id: str, values: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["worker_requests"].update(request_id, values)

    def worker_requests(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._reading() as db:
            rows = [dict(r) for r in db.query(
                "select * from worker_requests order by created_at desc limit ?", [limit])]
        for row in rows:
            row["params"] = json.loads(row["params"] or "{}")
        return rows

    def worker_request(self, request_id: str) -> dict[str, Any] | None:
        with self._reading() as db:
            rows = [dict(r) for r in db.query("select * from worker_requests where id = ?", [request_id])]
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
        with self._reading() as db:
            rows = list(db.query(
                "select * from worker_requests where worker = ? and action = 'provision'"
                " and status in ('ready', 'lost') order by created_at desc limit 1", [worker]))
        return rows[0] if rows else None

    def added_workers(self) -> list[dict[str, Any]]:
        """Provision requests whose worker the gateway still holds: ready or lost."""
        with self._reading() as db:
            return [dict(r) for r in db.query(
                "select * from worker_requests where action = 'provision' and status in ('ready', 'lost')"
                " order by created_at")]

    def lease_usage(self, now: str, active_states: Iterable[str], queued_states: Iterable[str]) -> dict[str, int]:
        """``active``: leases holding a slot (unused and unexpired, claimed by a submission in
        flight, bound to a job in ``active_states``, or a transfer under way); ``unused``: the
        unused unexpired ones; ``queued``: those used for a job the pool has not started
        (in flight, or a job in ``queued_states``). An expired unused lease is in none: it
        frees its slot by itself."""
        active, queued = list(active_states), list(queued_states)
        a, q = ",".join("?" * len(active)), ",".join("?" * len(queued))
        with self._reading() as db:
            row = db.execute(
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
        with self._reading() as db:
            rows = list(db.query("select * from slot_leases where worker_id = ?", [worker_id]))
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
