"""Every state change a caller may see, in order, resumable by id: the change stream's domain.

The stream is the store's ``job_events`` read forwards. An event id is never reused (see
migration m014), and ids grow in commit order, so "everything after id N" is exact: a client
that resumes with the last id it saw gets each later change once, none twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..access.identity import Actor
from ..errors import Forbidden, InvalidRequest
from ..store import JobFilter, Store

_EVENT_ID_RE = re.compile(r"^[0-9]{1,18}$")


@dataclass(frozen=True)
class ChangeFilter:
    """What a stream follows; every field narrows it. ``states`` are the changes' states."""

    job_id: str | None = None
    array_id: str | None = None
    states: tuple[str, ...] = ()
    owner: str | None = None


def parse_after(value: str | None) -> int | None:
    """A Last-Event-ID as sent back by a client: None (absent or empty) or the id it saw last."""
    if value is None or value == "":
        return None
    if not _EVENT_ID_RE.match(value):
        raise InvalidRequest("Last-Event-ID must be the id of an event this stream sent (digits), "
                             "or 0 for every change still kept", field="Last-Event-ID")
    return int(value)


def change_view(row: dict[str, Any]) -> dict[str, Any]:
    """One change as the stream sends it."""
    return {"id": row["id"], "job_id": row["job_id"], "job_name": row["name"], "array_id": row["array_id"],
            "state": row["state"], "reason": row["reason"], "at": row["at"]}


class ChangeFeed:
    def __init__(self, store: Store, jobs):
        """``jobs`` answers ``get`` / ``get_array`` for an actor (the job service), so a
        filter on a job or array the caller may not see is 'not found', as everywhere."""
        self.store = store
        self.jobs = jobs

    def check(self, actor: Actor, flt: ChangeFilter) -> JobFilter:
        """The store filter for what ``actor`` may follow; refuses what it may not."""
        if flt.job_id is not None:
            self.jobs.get(flt.job_id, actor)
        if flt.array_id is not None:
            self.jobs.get_array(flt.array_id, actor)
        owner = flt.owner
        if not actor.is_admin:
            if owner not in (None, actor.user):
                raise Forbidden("users follow only their own jobs; the owner filter is for admins")
            owner = actor.user
        return JobFilter(owner=owner, states=flt.states, array_id=flt.array_id, job_id=flt.job_id)

    def start(self, after: int | None) -> int:
        """Where a stream begins: after the id the client saw last, else after the newest change."""
        return self.store.last_change_id() if after is None else after

    def after(self, checked: JobFilter, after: int, limit: int) -> list[dict[str, Any]]:
        return [change_view(row) for row in self.store.changes_after(after, checked, limit)]
