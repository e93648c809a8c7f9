"""Job dependencies: when a job that waits for others may start, or can never start.

Pure (no store, no HTCondor): the service and the tracker hand in what the store knows of
the named jobs, so deciding for every waiting job of a cycle costs no schedd round trip.

A job names the jobs it waits for (or whole arrays: every item) with a mode:

- ``afterok``: each must complete; one that ends any other way (failed, removed, a
  submission error, or deleted) means the dependant can never start, and it is removed;
- ``afterany``: each must end, however it ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .states import JobState

AFTER_OK = "afterok"
AFTER_ANY = "afterany"
MODES = (AFTER_OK, AFTER_ANY)
# The most jobs (or arrays) one job may wait for.
MAX_DEPENDENCIES = 100
# What a named job that no longer exists (deleted) counts as: it ended without completing.
DELETED = "deleted"
# How many of the awaited ids a state_reason names before it says "and N more".
NAMED_IN_REASON = 3


@dataclass(frozen=True)
class Verdict:
    """``wait`` (with the reason to show), ``start``, or ``end`` (with the reason it ends)."""

    decision: str
    reason: str | None = None


def target_outcome(target: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """How a named job or array ended: (state, the item that decided it), or (None, None)
    while it has not ended. An array has ended once every item has; it completed only if
    every item did, otherwise it ended as its first item that did not complete."""
    if target is None or not target.get("items"):
        return DELETED, None
    items = target["items"]
    if any(not JobState(state).is_final for _, state in items):
        return None, None
    for job_id, state in items:
        if state != JobState.COMPLETED.value:
            return state, job_id if target.get("array") else None
    return JobState.COMPLETED.value, None


def verdict(edges: Iterable[tuple[str, str]], targets: Mapping[str, Mapping[str, Any]]) -> Verdict:
    """What to do with a job waiting for ``edges`` ((named id, mode) pairs), given the named
    jobs' current rows (``Store.dependency_targets``)."""
    waiting: list[str] = []
    for after_id, mode in edges:
        state, item = target_outcome(targets.get(after_id))
        if state is None:
            waiting.append(after_id)
        elif mode == AFTER_OK and state != JobState.COMPLETED.value:
            return Verdict("end", ended_reason(after_id, state, item))
    if waiting:
        return Verdict("wait", waiting_reason(waiting))
    return Verdict("start")


def waiting_reason(ids: list[str]) -> str:
    named = ", ".join(ids[:NAMED_IN_REASON])
    more = f" and {len(ids) - NAMED_IN_REASON} more" if len(ids) > NAMED_IN_REASON else ""
    return f"waiting for {named}{more}"


def ended_reason(after_id: str, state: str, item: str | None = None) -> str:
    if state == DELETED:
        return f"dependency {after_id} was deleted before it completed"
    which = f" (item {item})" if item else ""
    return f"dependency {after_id} ended {state}{which}"
