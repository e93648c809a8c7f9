"""Per-user limits: defaults from settings, overrides per user in the store."""

from __future__ import annotations

import math
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from ..errors import InvalidRequest, RateLimited, TooLarge
from ..jobs.states import ACTIVE_STATES
from ..store import Store
from ..timefmt import parse_iso, to_iso
from .audit import AuditLog
from .identity import Actor, check_user_name

LIMIT_NAMES = ("max_active_jobs", "max_upload_bytes", "submissions_per_minute", "max_spool_bytes")
WINDOW = timedelta(minutes=1)
# How long to suggest waiting when the active-jobs limit is hit: jobs end at their own pace.
ACTIVE_JOBS_RETRY_AFTER = 30
# The largest value SQLite stores as an integer.
MAX_LIMIT = 2**63 - 1


class QuotaService:
    def __init__(self, settings, store: Store, audit: AuditLog):
        self.defaults = {
            "max_active_jobs": settings.max_active_jobs_per_user,
            "max_upload_bytes": settings.max_upload_bytes,
            "submissions_per_minute": settings.submissions_per_minute,
            "max_spool_bytes": settings.max_spool_bytes_per_user,
        }
        self.store = store
        self.audit = audit

    @staticmethod
    def require_may_set(actor: Actor) -> None:
        """Only admins set limits (:class:`Forbidden` otherwise): checked before a request's body is read."""
        actor.require_admin("setting limits")

    def limits_for(self, user: str) -> dict[str, int]:
        overrides = self.store.user_limits(user)
        return {name: overrides.get(name) or self.defaults[name] for name in LIMIT_NAMES}

    def set_limits(self, actor: Actor, user: str, values: dict[str, Any], *,
                   request_id: str | None = None) -> dict[str, int]:
        """Set a user's overrides (admins only); audited with the limits that result."""
        self.require_may_set(actor)
        check_user_name(user)
        unknown = set(values) - set(LIMIT_NAMES)
        if unknown:
            raise InvalidRequest(f"unknown limits {sorted(unknown)}; limits are {', '.join(LIMIT_NAMES)}")
        for name, value in values.items():
            if value is not None and (
                    not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT):
                raise InvalidRequest(f"{name} must be an integer from 1 to {MAX_LIMIT} (or null for the default)",
                                     field=name)
        self.store.set_user_limits(user, {name: values.get(name) for name in LIMIT_NAMES if name in values})
        limits = self.limits_for(user)
        self.audit.record(actor, "limits.set", user, detail=limits, request_id=request_id)
        return limits

    def status(self, actor: Actor) -> dict[str, Any]:
        limits = self.limits_for(actor.user)
        now = datetime.now(timezone.utc)
        usage = self.store.usage(actor.user, self._active_states, to_iso(now - WINDOW))
        return self._status(actor, limits, usage, now)

    def _status(self, actor: Actor, limits: dict[str, int], usage: dict[str, Any], now: datetime) -> dict[str, Any]:
        active, recent = usage["active_jobs"], usage["recent"]
        submitted = len(recent) + usage["charged_jobs"]
        may_submit = max(0, min(limits["max_active_jobs"] - active, limits["submissions_per_minute"] - submitted))
        return {
            "user": actor.user, "role": actor.role, "limits": limits,
            "active_jobs": active, "submissions_last_minute": submitted,
            "spool_bytes": usage["spool_bytes"],
            "may_submit_now": may_submit,
            "retry_after": None if may_submit else self._retry_after(limits, active, recent, now),
        }

    @property
    def _active_states(self) -> list[str]:
        return [s.value for s in ACTIVE_STATES]

    def check_submission(self, actor: Actor, jobs: int = 1) -> None:
        """Refuse a submission of ``jobs`` jobs over a limit, naming the limit and when to retry.

        A quick look before reading a request's body; ``reserve`` decides for good."""
        self._refuse_over_limits(self.status(actor), jobs)

    @contextmanager
    def reserve(self, actor: Actor, jobs: int, spool_bytes: int = 0) -> Iterator[str]:
        """Hold ``jobs`` jobs' place, and the ``spool_bytes`` their inputs will take in the
        schedd's spool, against the user's limits while they are submitted.

        The check and the hold are one transaction, so concurrent submissions cannot
        together overshoot ``max_active_jobs`` or ``max_spool_bytes``. Yields the charge
        id: recording the jobs with it (``Store.insert_jobs(charge_id=...)``) consumes it;
        otherwise it is released when the block ends, whatever happened.
        """
        limits = self.limits_for(actor.user)
        now = datetime.now(timezone.utc)
        if spool_bytes > limits["max_spool_bytes"]:
            raise TooLarge(
                f"this submission's input takes {spool_bytes} bytes in the schedd's spool (every job and every "
                f"array item keeps its own copy), over your max_spool_bytes limit of {limits['max_spool_bytes']}; "
                "send fewer or smaller inputs, or split the array", limit="max_spool_bytes",
                spool_bytes=spool_bytes)

        def decide(usage: dict[str, Any]) -> None:
            self._refuse_over_limits(self._status(actor, limits, usage, now), jobs)
            if usage["spool_bytes"] + spool_bytes > limits["max_spool_bytes"]:
                raise RateLimited(
                    f"your queued and running jobs hold {usage['spool_bytes']} bytes of input in the schedd's spool; "
                    f"this submission's {spool_bytes} more would pass your max_spool_bytes limit of "
                    f"{limits['max_spool_bytes']}; wait for some jobs to end or remove some",
                    retry_after=ACTIVE_JOBS_RETRY_AFTER, limit="max_spool_bytes", spool_bytes=spool_bytes)

        charge_id = self.store.take_charge(actor.user, jobs, spool_bytes, self._active_states,
                                           to_iso(now - WINDOW), decide)
        try:
            yield charge_id
        finally:
            self.store.release_charge(charge_id)

    @staticmethod
    def _refuse_over_limits(state: dict[str, Any], jobs: int) -> None:
        limits = state["limits"]
        if jobs > limits["max_active_jobs"]:
            raise RateLimited(
                f"{jobs} jobs at once exceed your max_active_jobs limit of {limits['max_active_jobs']}; "
                "split the array", retry_after=ACTIVE_JOBS_RETRY_AFTER, limit="max_active_jobs")
        if state["active_jobs"] + jobs > limits["max_active_jobs"]:
            raise RateLimited(
                f"you have {state['active_jobs']} queued, running or submitting jobs and the max_active_jobs "
                f"limit is {limits['max_active_jobs']}; wait for some to end or remove some",
                retry_after=ACTIVE_JOBS_RETRY_AFTER, limit="max_active_jobs",
            )
        if jobs > limits["submissions_per_minute"]:
            raise RateLimited(
                f"{jobs} jobs at once exceed your submissions_per_minute limit of "
                f"{limits['submissions_per_minute']}; split the array", retry_after=60, limit="submissions_per_minute")
        if state["submissions_last_minute"] + jobs > limits["submissions_per_minute"]:
            raise RateLimited(
                f"you submitted {state['submissions_last_minute']} jobs in the last minute, "
                "the submissions_per_minute limit", retry_after=state["retry_after"] or 1,
                limit="submissions_per_minute",
            )

    @staticmethod
    def _retry_after(limits, active, recent, now) -> int:
        if active >= limits["max_active_jobs"]:
            return ACTIVE_JOBS_RETRY_AFTER
        oldest = parse_iso(recent[0]) if recent else now
        return max(1, math.ceil((oldest + WINDOW - now).total_seconds()))
