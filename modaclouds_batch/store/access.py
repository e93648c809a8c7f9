"""Tokens, per-user limits, quota charges and usage, and the audit log (tokens, user_limits, charges,
audit).

A part of ``Store`` (store/__init__.py): its methods share the store's connections and transactions.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Iterable

from ..timefmt import now_iso


class AccessQueries:
    def usage(self, owner: str, active_states: Iterable[str], since: str) -> dict[str, Any]:
        """What the owner holds now: active jobs, submissions since a time (creation times,
        oldest first) and spool bytes of active jobs, each with what charges in flight add."""
        states = list(active_states)
        marks = ",".join("?" * len(states))
        with self._reading() as db:
            # From the tallies (a few rows, not every active job): they count unexpired jobs
            # only, and only final jobs ever expire (Retention.sweep_expired).
            active, spool = db.execute(
                f"select coalesce(sum(n), 0), coalesce(sum(spool_bytes), 0) from job_tallies"
                f" where owner = ? and state in ({marks})", [owner, *states]).fetchone()
            charged_jobs, charged_bytes = db.execute(
                "select coalesce(sum(jobs), 0), coalesce(sum(spool_bytes), 0) from charges where owner = ?",
                [owner]).fetchone()
            return {"active_jobs": active + charged_jobs, "recent": self.submissions_since(owner, since),
                    "charged_jobs": charged_jobs, "spool_bytes": spool + charged_bytes}

    def take_charge(self, owner: str, jobs: int, spool_bytes: int, active_states: Iterable[str], since: str,
                    decide: Callable[[dict[str, Any]], None]) -> str:
        """Check and hold a submission's place at once: ``decide`` sees the owner's usage
        (as ``usage``) and raises to refuse; otherwise a charge is recorded and its id returned.
        Concurrent submissions see each other's charges, so a limit cannot be overshot."""
        with self.transaction():
            decide(self.usage(owner, active_states, since))
            charge_id = str(uuid.uuid4())
            self._insert_rows("charges", [{"id": charge_id, "owner": owner, "jobs": jobs, "spool_bytes": spool_bytes,
                                           "created_at": now_iso()}])
            return charge_id

    def release_charge(self, charge_id: str) -> None:
        """Drop a charge (a no-op once the jobs it held were recorded)."""
        # Looked for first, beside the writer: after a submission the charge is gone (the job
        # rows' commit consumed it), and a write transaction would only queue for nothing.
        # A charge id is never made again, so a charge seen gone stays gone.
        with self._reading() as db:
            if db.execute("select 1 from charges where id = ?", [charge_id]).fetchone() is None:
                return
        with self.transaction() as db:
            db.execute("delete from charges where id = ?", [charge_id])

    def clear_charges(self) -> int:
        """At start-up: charges a stopped gateway left behind hold nothing any more."""
        with self.transaction() as db:
            return db.execute("delete from charges").rowcount

    def submissions_since(self, owner: str, since: str) -> list[str]:
        """Creation times of the owner's jobs since a time, oldest first."""
        with self._reading() as db:
            return [r[0] for r in db.execute(
                "select created_at from jobs where owner = ? and created_at >= ? order by created_at",
                [owner, since],
            )]

    def insert_token(self, token: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["api_tokens"].insert(token)

    def token_by_hash(self, token_hash: str) -> dict[str, Any] | None:
        with self._reading() as db:
            rows = list(db.query("select * from api_tokens where token_hash = ?", [token_hash]))
        return rows[0] if rows else None

    def touch_token(self, token_id: str, at: str) -> None:
        with self.transaction() as db:
            db.execute("update api_tokens set last_used_at = ? where id = ?", [at, token_id])

    def list_tokens(self, owner: str | None = None) -> list[dict[str, Any]]:
        where, params = ("where owner = ?", [owner]) if owner else ("", [])
        with self._reading() as db:
            return [
                {k: v for k, v in row.items() if k != "token_hash"}
                for row in db.query(f"select * from api_tokens {where} order by created_at", params)
            ]

    def revoke_token(self, token_id: str, at: str) -> bool:
        with self.transaction() as db:
            cursor = db.execute(
                "update api_tokens set revoked_at = ? where id = ? and revoked_at is null", [at, token_id])
            return cursor.rowcount == 1

    def user_limits(self, owner: str) -> dict[str, Any]:
        with self._reading() as db:
            rows = list(db.query("select * from user_limits where owner = ?", [owner]))
        return rows[0] if rows else {}

    def set_user_limits(self, owner: str, limits: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["user_limits"].upsert({"owner": owner, **limits}, pk="owner")

    def append_audit(self, entry: dict[str, Any]) -> None:
        with self.transaction():
            self._insert_rows("audit", [entry])

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
        with self._reading() as db:
            return list(db.query(f"select * from audit {clause} order by id desc limit ?", [*params, limit]))
