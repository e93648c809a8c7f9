"""Slot leases (seed 000): a worker-id reserves one of a limited number of slots for a while,
and is used once, for a job or for a data transfer that can be paused and terminated.

Knows leases, jobs and transfers; knows nothing of HTTP. A lease's state is a core
``JobState`` (one vocabulary): an unused lease is ``idle``, a job lease is its job's state,
a transfer is ``running``, ``suspended`` (paused), ``completed`` or ``removed``
(terminated). Leases live in the store, so a restart loses none; an unused lease expires
by itself (every count compares with its ``expires_at``), no sweep needed.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from ..access.audit import AuditLog
from ..access.identity import Actor
from ..errors import Busy, Conflict, InvalidRequest
from ..store import Store
from ..timefmt import now_iso, to_iso
from .states import ACTIVE_STATES, JobAction, JobState, action_conflict

# Unused leases are forgotten this long after they expired (until then they are 'expired', not 'unknown').
FORGET_EXPIRED_AFTER = timedelta(days=1)
# What a paced transfer hands on at once, so a pause or a termination takes effect promptly.
PACED_CHUNK = 64 * 1024
RETRY_AFTER_SECONDS = 5


class TransferTerminated(Exception):
    """Raised inside a transfer's reads or writes once it was terminated."""


@dataclass
class Transfer:
    """One upload or download under way in this process: modify pauses, resumes or ends it.

    ``gate(n)`` is called before each piece of ``n`` bytes is read or written: it waits
    while paused, raises TransferTerminated once terminated, and paces the transfer."""

    worker_id: str
    kind: str
    bytes_per_second: int = 0
    # A transfer paused longer than this is terminated (it holds a server thread and a slot).
    max_pause_seconds: float = 300.0
    state: JobState = JobState.RUNNING
    bytes: int = 0
    reason: str | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def gate(self, size: int) -> None:
        with self._cond:
            paused_at = time.monotonic()
            while self.state is JobState.SUSPENDED:
                left = self.max_pause_seconds - (time.monotonic() - paused_at)
                if left <= 0:
                    self.state = JobState.REMOVED
                    self.reason = f"paused for more than {self.max_pause_seconds:.0f} s"
                    break
                self._cond.wait(left)
            if self.state is JobState.REMOVED:
                raise TransferTerminated(self.reason or "terminated")
            self.bytes += size
            if self.bytes_per_second:
                # Interruptible: a termination (or a pause) ends the wait at once.
                self._cond.wait(size / self.bytes_per_second)

    def set_state(self, state: JobState, reason: str | None = None) -> None:
        with self._cond:
            self.state = state
            self.reason = reason
            self._cond.notify_all()


class PacedReader:
    """A readable stream whose reads pass through a transfer's gate (an upload's body)."""

    def __init__(self, stream, transfer: Transfer):
        self.stream = stream
        self.transfer = transfer

    def read(self, size: int = -1) -> bytes:
        size = PACED_CHUNK if size is None or size < 0 else min(size, PACED_CHUNK)
        chunk = self.stream.read(size)
        if chunk:
            self.transfer.gate(len(chunk))
        return chunk


class SlotLeases:
    def __init__(self, store: Store, jobs, free_slots: Callable[[], int], audit: AuditLog, *,
                 lease_seconds: float, max_leased: int, bytes_per_second: int = 0):
        self.store = store
        self.audit = audit
        self.jobs = jobs  # the JobService: every action on a job goes through it
        # How many one-CPU jobs the pool could start now (the collector's free slots).
        self.free_slots = free_slots
        self.lease_seconds = lease_seconds
        self.max_leased = max_leased
        self.bytes_per_second = bytes_per_second
        self._transfers: dict[str, Transfer] = {}
        self._lock = threading.Lock()

    # --- granting -----------------------------------------------------------------------

    def grant(self, actor: Actor, request_id: str | None = None) -> dict[str, Any]:
        """A new lease for ``actor``, or Busy when the gateway's limit or the pool is full."""
        now = datetime.now(timezone.utc)
        self.store.delete_expired_leases(to_iso(now - FORGET_EXPIRED_AFTER))
        free = self.free_slots()
        row = {"worker_id": str(uuid.uuid4()), "owner": actor.user, "created_at": to_iso(now),
               "expires_at": to_iso(now + timedelta(seconds=self.lease_seconds))}

        def decide(usage: dict[str, int]) -> None:
            if usage["active"] >= self.max_leased:
                raise Busy(f"all {self.max_leased} leased slots are in use (max_leased_slots); retry in a few "
                           "seconds, once a leased job or transfer ends or an unused lease expires",
                           retry_after=RETRY_AFTER_SECONDS, limit="max_leased_slots")
            unstarted = usage["unused"] + usage["queued"]
            if free - unstarted < 1:
                raise Busy(f"the pool has no free slot ({free} free, {unstarted} already leased and not started); "
                           "retry in a few seconds", retry_after=RETRY_AFTER_SECONDS, limit="pool")

        self.store.grant_lease(row, _values(ACTIVE_STATES), [JobState.IDLE.value], decide)
        self.audit.record(actor, "slot.lease", row["worker_id"], request_id=request_id,
                          detail={"expires_at": row["expires_at"]})
        return row

    # --- finding -------------------------------------------------------------------------

    def find(self, actor: Actor, worker_id: str) -> dict[str, Any]:
        """The lease, if ``actor`` may see it; an unknown, malformed, expired-unused or other
        user's worker-id is InvalidRequest (the same words for the last two: ids do not leak)."""
        try:
            uuid.UUID(worker_id)
        except ValueError:
            raise InvalidRequest(f"'{worker_id[:64]}' is not a worker-id; GET /slots/new_job/ gives one",
                                 field="worker-id") from None
        lease = self.store.get_lease(worker_id)
        if lease is None or not actor.may_see(lease["owner"]):
            raise InvalidRequest(f"no lease {worker_id} (unknown, or expired and forgotten); GET /slots/new_job/ "
                                 "gives a new one", field="worker-id")
        if lease["used_at"] is None and lease["ended_at"] is None and lease["expires_at"] <= now_iso():
            raise InvalidRequest(f"lease {worker_id} expired unused at {lease['expires_at']}; GET /slots/new_job/ "
                                 "gives a new one", field="worker-id", expired_at=lease["expires_at"])
        return lease

    def claim(self, actor: Actor, worker_id: str, kind: str) -> dict[str, Any]:
        """Use the lease (once) for ``kind``; a job also needs the slot it reserved to be free still."""
        lease = self.find(actor, worker_id)
        if lease["owner"] != actor.user:
            raise InvalidRequest(f"lease {worker_id} is {lease['owner']}'s; only its owner uses it", field="worker-id")
        if lease["used_at"] is not None or lease["ended_at"] is not None:
            raise InvalidRequest(f"lease {worker_id} was already used ({lease['kind'] or 'given back'}); a lease "
                                 "is single-use: GET /slots/new_job/ gives a new one", field="worker-id")
        if kind == "job":
            usage = self.store.lease_usage(now_iso(), _values(ACTIVE_STATES), [JobState.IDLE.value])
            free = self.free_slots()
            if free - usage["queued"] < 1:
                raise Busy(f"the slot lease {worker_id} reserved was lost: the pool has {free} free slots and "
                           f"{usage['queued']} leased jobs waiting for them; the lease stays usable until "
                           f"{lease['expires_at']}, retry shortly", retry_after=RETRY_AFTER_SECONDS, limit="pool")
        status = JobState.RUNNING.value if kind != "job" else None
        if not self.store.claim_lease(worker_id, actor.user, kind, now_iso(), status):
            raise InvalidRequest(f"lease {worker_id} was just used or expired; GET /slots/new_job/ gives a new one",
                                 field="worker-id")
        return self.store.get_lease(worker_id)

    def release(self, worker_id: str) -> None:
        """A job whose submission was refused gives its lease back, to retry with a better body."""
        self.store.unclaim_lease(worker_id)

    def bind_job(self, worker_id: str, job_id: str) -> None:
        self.store.update_lease(worker_id, {"job_id": job_id})

    # --- state -----------------------------------------------------------------------------

    def state(self, actor: Actor, lease: dict[str, Any]) -> tuple[JobState, dict[str, Any] | None]:
        """The lease's state, and its job (None for leases not used for a job)."""
        if lease["kind"] == "job" and lease["job_id"]:
            job = self.store.get_job(lease["job_id"])
            if job is None or job.get("expired_at"):
                return JobState.REMOVED, None
            state = JobState(job["state"])
            if state.is_final and lease["ended_at"] is None:
                self.store.update_lease(lease["worker_id"], {"ended_at": job.get("completed_at") or now_iso()})
            return state, job
        transfer = self._transfers.get(lease["worker_id"])
        if transfer is not None:
            return transfer.state, None
        if lease["status"]:
            return JobState(lease["status"]), None
        return JobState.IDLE, None

    def refresh(self, lease: dict[str, Any]) -> None:
        """Bring a lease's job up to date with the schedd (the tracker would, a cycle later)."""
        job = self.store.get_job(lease["job_id"]) if lease["kind"] == "job" and lease["job_id"] else None
        if job is not None and not JobState(job["state"]).is_final:
            self.jobs.refresh([job])

    def bytes_moved(self, lease: dict[str, Any]) -> int | None:
        transfer = self._transfers.get(lease["worker_id"])
        return transfer.bytes if transfer is not None else lease["bytes"]

    # --- control ---------------------------------------------------------------------------

    def modify(self, actor: Actor, worker_id: str, action: JobAction, request_id: str | None = None) -> None:
        """Suspend, continue or remove what the lease holds: its job (through the job service),
        its transfer, or the unused lease itself (remove only: it frees the slot)."""
        lease = self.find(actor, worker_id)
        self.refresh(lease)  # the transition is judged on what the schedd says now
        state, job = self.state(actor, lease)
        conflict = action_conflict(action, state)
        if conflict:
            raise InvalidRequest(conflict, field="new_job_status", job_status=state.value)
        if job is not None:
            try:
                self.jobs.act(job["id"], action.value, actor, request_id)
            except Conflict as exc:  # HTCondor moved on meanwhile: the seed answers 400
                raise InvalidRequest(exc.message, field="new_job_status", **exc.details) from None
            return
        transfer = self._transfers.get(worker_id)
        if transfer is not None:
            new = {JobAction.SUSPEND: JobState.SUSPENDED, JobAction.CONTINUE: JobState.RUNNING,
                   JobAction.REMOVE: JobState.REMOVED}[action]
            transfer.set_state(new, f"terminated by {actor.user}" if new is JobState.REMOVED else None)
            self.store.update_lease(worker_id, {"status": new.value})
            self.audit.record(actor, f"slot.{transfer.kind}.{action.value}", worker_id, request_id=request_id)
            return
        if lease["kind"] == "job":  # claimed by a submission in flight: nothing to act on yet
            raise InvalidRequest(f"lease {worker_id}'s job is being submitted; retry in a moment",
                                 field="new_job_status")
        # An unused lease: only remove applies (action_conflict said so); it frees its slot.
        self.store.update_lease(worker_id, {"used_at": now_iso(), "ended_at": now_iso(), "status": "removed",
                                            "reason": f"given back unused by {actor.user}"})
        self.audit.record(actor, "slot.release", worker_id, request_id=request_id)

    # --- transfers ---------------------------------------------------------------------------

    def start_transfer(self, actor: Actor, worker_id: str, kind: str) -> Transfer:
        self.claim(actor, worker_id, kind)
        transfer = Transfer(worker_id, kind, self.bytes_per_second, max_pause_seconds=self.lease_seconds)
        with self._lock:
            self._transfers[worker_id] = transfer
        return transfer

    def give_back(self, transfer: Transfer) -> None:
        """A refused transfer request: forget the transfer, and the lease is unused again."""
        with self._lock:
            self._transfers.pop(transfer.worker_id, None)
        self.store.unclaim_lease(transfer.worker_id)

    def finish_transfer(self, transfer: Transfer, state: JobState, reason: str | None = None,
                        data_id: str | None = None) -> dict[str, Any]:
        """Record how the transfer ended (completed or removed) and forget it in memory."""
        if state is JobState.REMOVED:
            reason = reason or transfer.reason or "terminated"
        values = {"status": state.value, "bytes": transfer.bytes, "ended_at": now_iso(), "reason": reason,
                  "data_id": data_id}
        self.store.update_lease(transfer.worker_id, values)
        with self._lock:
            self._transfers.pop(transfer.worker_id, None)
        transfer.set_state(state, reason)
        return self.store.get_lease(transfer.worker_id)


def _values(states) -> list[str]:
    return [s.value for s in states]


