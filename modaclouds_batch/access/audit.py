"""Who did what to which job or object, and when: a table admins query and a log line each.

What was refused is recorded too (401, 403, 429, and 404 on another user's id), with the
client address, as action ``request.refused`` and outcome ``refused``. So that a flood of
bad requests cannot fill the database, at most ``refusals_per_minute`` refusals a minute
are recorded per client address and status; the next one recorded says how many were
left out (``detail.suppressed``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from typing import Any

from ..store import Store
from ..timefmt import now_iso
from .identity import Actor

log = logging.getLogger("modaclouds_batch.audit")
REFUSED = "request.refused"
# The address the current request came from (set by the app's request middleware).
client_address_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("client_address", default=None)
# Refusal counters are forgotten once this many clients are tracked (and their minute is over).
_MAX_TRACKED = 10_000


class AuditLog:
    def __init__(self, store: Store, refusals_per_minute: int = 60):
        self.store = store
        self.refusals_per_minute = refusals_per_minute
        # (client, status) -> [minute started (monotonic), recorded in it, left out since last recorded]
        self._refusals: dict[tuple[str | None, int], list[float]] = {}
        self._lock = threading.Lock()

    def record(self, actor: Actor | None, action: str, target: str | None, *, outcome: str = "ok",
               detail: dict[str, Any] | None = None, request_id: str | None = None,
               client: str | None = None) -> None:
        """One entry; ``client`` defaults to the current request's address."""
        entry = {
            "at": now_iso(), "actor": actor.user if actor else None, "role": actor.role if actor else None,
            "action": action, "target": target, "outcome": outcome,
            "detail": json.dumps(detail, sort_keys=True) if detail else None, "request_id": request_id,
            "client": client or client_address_var.get(),
        }
        self.store.append_audit(entry)
        log.info(json.dumps({"audit": True, **entry}, sort_keys=True))

    def refused(self, actor: Actor | None, status: int, *, method: str, path: str, reason: str,
                target: str | None = None, request_id: str | None = None, client: str | None = None) -> bool:
        """Record a refused request; False when left out by the per-client bound.

        ``client`` defaults to the current request's address (refusals made before the app
        runs, at the headers, pass it)."""
        client = client or client_address_var.get()
        suppressed = self._count_refusal(client, status)
        if suppressed is None:
            return False
        detail = {"status": status, "method": method, "path": path, "error": reason}
        if suppressed:
            detail["suppressed"] = suppressed
        self.record(actor, REFUSED, target or path, outcome="refused", detail=detail, request_id=request_id,
                    client=client)
        return True

    def _count_refusal(self, client: str | None, status: int) -> int | None:
        """How many refusals were left out before this one, or None to leave this one out."""
        now = time.monotonic()
        with self._lock:
            if len(self._refusals) > _MAX_TRACKED:
                self._refusals = {k: v for k, v in self._refusals.items() if now - v[0] < 60}
            counter = self._refusals.setdefault((client, status), [now, 0, 0])
            if now - counter[0] >= 60:
                counter[0], counter[1] = now, 0
            if counter[1] >= self.refusals_per_minute:
                counter[2] += 1
                return None
            counter[1] += 1
            suppressed, counter[2] = int(counter[2]), 0
            return suppressed

    def entries(self, actor: Actor, *, user: str | None, action: str | None, since: str | None, limit: int,
                outcome: str | None = None):
        actor.require_admin("the audit log")
        rows = self.store.audit_entries(user, action, since, limit, outcome)
        for row in rows:
            row["detail"] = json.loads(row["detail"]) if row["detail"] else None
        return rows
