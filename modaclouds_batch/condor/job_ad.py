"""HTCondor's job vocabulary, typed for the layers above condor/: a job ad as a read-only
view with named properties, its JobStatus as an enum, and the actions a client applies.

The clients (condor/schedd.py, tests/unit/fakes.py) return ``JobAd``s; jobs/ asks them
``ad.status is JobStatus.HELD`` or ``ad.spooling_input``, never ``ad["JobStatus"] == 5``.
The view is still a Mapping of the projected attributes (``ad.get("RemoteHost")``), so the
detail fields copied verbatim into the store need no property each.
"""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import Any, Iterator, Mapping

# The attributes the gateway sets on its own jobs (see submit_description.py).
GATEWAY_JOB_ID = "GatewayJobId"
GATEWAY_WAITING = "GatewayWaiting"


class JobStatus(IntEnum):
    """HTCondor's JobStatus codes; ``label`` is condor_q's name for each."""

    IDLE = 1
    RUNNING = 2
    REMOVED = 3
    COMPLETED = 4
    HELD = 5
    TRANSFERRING_OUTPUT = 6
    SUSPENDED = 7

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    JobStatus.IDLE: "Idle",
    JobStatus.RUNNING: "Running",
    JobStatus.REMOVED: "Removed",
    JobStatus.COMPLETED: "Completed",
    JobStatus.HELD: "Held",
    JobStatus.TRANSFERRING_OUTPUT: "Transferring Output",
    JobStatus.SUSPENDED: "Suspended",
}

# What a client must project for ``status`` and ``spooling_input``; for ``gateway_job_id``,
# ``cluster_id`` and ``proc_id``.
STATUS_PROJECTION = ["JobStatus", "HoldReasonCode"]
ID_PROJECTION = [GATEWAY_JOB_ID, "ClusterId", "ProcId"]

# HoldReasonCode 16: the schedd holds a spooled job until its input files arrive.
HOLD_CODE_SPOOLING_INPUT = 16


class CondorAction(str, Enum):
    """What a client's ``act`` applies to the jobs a constraint matches."""

    REMOVE = "remove"
    HOLD = "hold"
    RELEASE = "release"
    SUSPEND = "suspend"
    CONTINUE = "continue"


class JobAd(Mapping[str, Any]):
    """One job ad's projected attributes (absent or undefined ones left out), read-only."""

    __slots__ = ("_attrs",)

    def __init__(self, attrs: Mapping[str, Any] | None = None, **more: Any):
        self._attrs = {**(attrs or {}), **more}

    @classmethod
    def of(cls, ad: Mapping[str, Any]) -> "JobAd":
        """``ad`` as a JobAd (itself if it is one already)."""
        return ad if isinstance(ad, JobAd) else cls(ad)

    def __getitem__(self, name: str) -> Any:
        return self._attrs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._attrs)

    def __len__(self) -> int:
        return len(self._attrs)

    def __repr__(self) -> str:
        return f"JobAd({self._attrs!r})"

    # --- named facts --------------------------------------------------------------

    @property
    def status(self) -> JobStatus | None:
        """The JobStatus, or None when the ad has none or one this gateway does not know."""
        try:
            return JobStatus(int(self._attrs["JobStatus"]))
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def raw_status(self) -> Any:
        """The JobStatus value as HTCondor gave it (for an error naming an unknown code)."""
        return self._attrs.get("JobStatus")

    @property
    def hold_reason_code(self) -> int | None:
        return self._attrs.get("HoldReasonCode")

    @property
    def hold_reason(self) -> str | None:
        return self._attrs.get("HoldReason")

    @property
    def spooling_input(self) -> bool:
        """Held by the schedd only until its spooled input files arrive (not a real hold)."""
        return self.status is JobStatus.HELD and self.hold_reason_code == HOLD_CODE_SPOOLING_INPUT

    @property
    def gateway_job_id(self) -> str | None:
        return self._attrs.get(GATEWAY_JOB_ID)

    @property
    def gated(self) -> bool:
        """Submitted waiting for other jobs, its gate (GatewayWaiting) still closed."""
        return self._attrs.get(GATEWAY_WAITING) is True

    @property
    def cluster_id(self) -> int | None:
        return self._attrs.get("ClusterId")

    @property
    def proc_id(self) -> int | None:
        return self._attrs.get("ProcId")

    @property
    def exit_by_signal(self) -> bool:
        return bool(self._attrs.get("ExitBySignal"))

    @property
    def exit_code(self) -> int | None:
        return self._attrs.get("ExitCode")

    @property
    def exit_signal(self) -> int | None:
        return self._attrs.get("ExitSignal")
