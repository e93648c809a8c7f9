"""Idempotency keys (the idempotency_keys table): claimed on arrival, tied to the jobs they made, swept
when old.

A part of ``Store`` (store/__init__.py): its methods share the store's connections and transactions.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from .records import _decode_key


class IdempotencyQueries:
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
        with self._reading() as db:
            rows = list(db.query("select * from idempotency_keys where owner = ? and key = ?", [owner, key]))
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
        with self._reading() as db:
            return [_decode_key(r) for r in db.query(
                f"select * from idempotency_keys where state in ({','.join('?' * len(states))})"
                " order by created_at", states)]

    def sweep_idempotency_keys(self, now: str) -> int:
        """Forget keys past their window (not one a request is answering, or a restart settling)."""
        with self.transaction() as db:
            return db.execute("delete from idempotency_keys where expires_at <= ?"
                              " and state not in ('processing', 'unsettled')", [now]).rowcount
