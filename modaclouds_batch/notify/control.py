"""What a job's owner can do with its notifications: see them in brief, cancel, redirect.

Ownership is the job's: whoever may see the job (its owner, an admin) may steer its
notifications; anyone else is told the job does not exist. A new URL passes the same
checks as one given at submission (``targets.check_url``).
"""

from __future__ import annotations

from typing import Any, Callable

from ..access.identity import Actor
from ..errors import Conflict, InvalidRequest, NotFound
from ..store import Store, url_host
from ..timefmt import now_iso
from . import targets

# How many of a job's notifications its view lists (the newest); the rest are counted.
RECENT = 5


class NotificationControl:
    def __init__(self, store: Store, jobs, audit, *, allow_private: bool,
                 on_change: Callable[[], None] | None = None, signed: bool = True):
        self.store = store
        self.jobs = jobs  # JobService: who may see which job
        self.audit = audit
        self.allow_private = allow_private
        # Wakes the webhook worker, so a redirected notification goes out now.
        self.on_change = on_change
        self.signed = signed

    def summary(self, job_id: str) -> dict[str, Any]:
        """For the job view: counts by status and the newest few, each with its state."""
        counts, recent = self.store.notification_summary(job_id, RECENT)
        return {"signed": self.signed, "total": sum(counts.values()), "counts": counts, "recent": recent}

    def cancel(self, job_id: str, event_id: str, actor: Actor, request_id: str | None = None) -> dict[str, Any]:
        job = self.jobs.get(job_id, actor)
        before = self.store.cancel_notification(job["id"], event_id, f"cancelled by {actor.user} at {now_iso()}")
        self._check(job["id"], event_id, before, "cancelled", ("pending",))
        self.audit.record(actor, "notification.cancel", job["id"], detail={"event_id": event_id},
                          request_id=request_id)
        return self.store.get_notification(job["id"], event_id)

    def redirect(self, job_id: str, event_id: str, url: Any, actor: Actor,
                 request_id: str | None = None) -> dict[str, Any]:
        job = self.jobs.get(job_id, actor)
        if not isinstance(url, str) or not url.strip():
            raise InvalidRequest('give the new URL as {"url": "https://..."}', field="url")
        try:
            url = targets.check_url(url, allow_private=self.allow_private)
        except targets.UnsafeTarget as exc:
            raise InvalidRequest(f"url {exc}", field="url") from exc
        before = self.store.redirect_notification(job["id"], event_id, url, now_iso())
        self._check(job["id"], event_id, before, "redirected", ("pending", "failed"))
        # The host only: a URL's path or query may carry a receiver's own token.
        self.audit.record(actor, "notification.redirect", job["id"],
                          detail={"event_id": event_id, "host": url_host(url)}, request_id=request_id)
        if self.on_change:
            self.on_change()
        return self.store.get_notification(job["id"], event_id)

    @staticmethod
    def _check(job_id: str, event_id: str, before: str | None, done: str, allowed: tuple[str, ...]) -> None:
        if before is None:
            raise NotFound(f"job {job_id} has no notification {event_id}; GET /jobs/{job_id}/notifications lists them")
        if before not in allowed:
            raise Conflict(f"notification {event_id} is {before}; only {' or '.join(allowed)} ones can be {done}",
                           status=before)
