"""Who did what to which job or object, and when: a table admins query and a log line each."""

from __future__ import annotations

import json
import logging
from typing import Any

from ..store import Store
from ..timefmt import now_iso
from .identity import Actor

log = logging.getLogger("modaclouds_batch.audit")


class AuditLog:
    def __init__(self, store: Store):
        self.store = store

    def record(self, actor: Actor, action: str, target: str | None, *, outcome: str = "ok",
               detail: dict[str, Any] | None = None, request_id: str | None = None) -> None:
        entry = {
            "at": now_iso(), "actor": actor.user, "role": actor.role, "action": action,
            "target": target, "outcome": outcome,
            "detail": json.dumps(detail, sort_keys=True) if detail else None, "request_id": request_id,
        }
        self.store.append_audit(entry)
        log.info(json.dumps({"audit": True, **entry}, sort_keys=True))

    def entries(self, actor: Actor, *, user: str | None, action: str | None, since: str | None, limit: int):
        actor.require_admin("the audit log")
        rows = self.store.audit_entries(user, action, since, limit)
        for row in rows:
            row["detail"] = json.loads(row["detail"]) if row["detail"] else None
        return rows
