"""What the collector knows about execute nodes, and the startd commands admins use.

htcondor2 only; every call holds the process-wide lock of condor/session.py. A "worker" is one startd: its slots carry ``Name = slotN@<worker>``.
"""

from __future__ import annotations

import logging
from typing import Any

import classad2
import htcondor2

from .schedd import CondorUnavailable, ad_to_dict, configure
from .session import POLICY

log = logging.getLogger(__name__)

SLOT_PROJECTION = [
    "Name", "Machine", "State", "Activity", "Cpus", "Memory", "Disk", "TotalCpus", "TotalMemory",
    "SlotType", "PartitionableSlot", "DynamicSlot", "LoadAvg", "TotalLoadAvg", "GatewayRuntimes",
    "GatewayWorker", "Draining", "DrainReason", "RemoteOwner", "JobId", "Start", "MyAddress",
    "CondorVersion", "OpSys", "Arch", "EnteredCurrentState", "DaemonStartTime",
    "TotalSlotCpus", "TotalSlotMemory", "TotalSlotDisk",
]
SCHEDD_PROJECTION = ["TotalIdleJobs", "TotalRunningJobs", "TotalHeldJobs"]
DRAIN_TYPES = {
    "graceful": htcondor2.DrainType.Graceful,
    "quick": htcondor2.DrainType.Quick,
    "fast": htcondor2.DrainType.Fast,
}


def startd_constraint(worker: str) -> str:
    """Matches the startd daemon ad named exactly ``worker`` (``=?=``: case and all), so
    ``localhost`` never finds ``exec-1a2b3c4d@localhost``."""
    return f"Name =?= {classad2.quote(worker)}"


def worker_name(slot_name: str) -> str:
    """``slot1_2@worker2@host`` -> ``worker2@host``: the startd that owns the slot."""
    return slot_name.split("@", 1)[1] if "@" in slot_name else slot_name


class CollectorClient:
    def __init__(self, condor_config):
        self.condor_config = condor_config
        self.round_trips = 0

    def pool_ads(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every slot ad and every schedd ad in the pool, in one collector query."""
        projection = SLOT_PROJECTION + SCHEDD_PROJECTION + ["MyType"]
        with POLICY.lock_for("collector"):
            configure(self.condor_config)
            try:
                self.round_trips += 1
                ads = htcondor2.Collector().query(
                    htcondor2.AdType.Any, constraint='MyType == "Machine" || MyType == "Scheduler"',
                    projection=projection)
            except htcondor2.HTCondorException as exc:
                raise CondorUnavailable(f"collector query: {exc}") from exc
        rows = [ad_to_dict(ad, projection) for ad in ads]
        return ([r for r in rows if r.get("MyType") == "Machine"],
                [r for r in rows if r.get("MyType") == "Scheduler"])

    def _startd_ad(self, worker: str):
        """The daemon ad of the startd named exactly ``worker``, or None."""
        try:
            constraint = startd_constraint(worker)
        except (UnicodeEncodeError, ValueError):  # a NUL or a lone surrogate: no startd's name
            return None
        configure(self.condor_config)
        self.round_trips += 1
        ads = htcondor2.Collector().query(
            htcondor2.AdType.StartDaemon, constraint=constraint,
            projection=["MyAddress", "Name", "Machine"])
        return ads[0] if ads else None

    def _startd(self, worker: str) -> htcondor2.Startd:
        ad = self._startd_ad(worker)
        if ad is None:
            raise CondorUnavailable(f"no startd named {worker} in the collector")
        return htcondor2.Startd(ad)

    def worker_slots(self, worker: str) -> list[dict[str, Any]] | None:
        """The worker's slot ads as its startd says now (not the collector's copy, which
        lags a drain by an update interval); None when no startd has that exact name."""
        with POLICY.lock_for("collector"):
            try:
                ad = self._startd_ad(worker)
                if ad is None:
                    return None
                self.round_trips += 1
                ads = htcondor2.Collector(ad["MyAddress"]).query(htcondor2.AdType.Startd, projection=SLOT_PROJECTION)
            except htcondor2.HTCondorException as exc:
                raise CondorUnavailable(f"worker {worker} does not answer: {exc}") from exc
        return [ad_to_dict(slot, SLOT_PROJECTION) for slot in ads]

    def drain(self, worker: str, how: str, reason: str) -> str:
        """Ask the worker's startd to drain; returns HTCondor's drain request id."""
        with POLICY.lock_for("collector"):
            try:
                startd = self._startd(worker)
                self.round_trips += 1
                return startd.drainJobs(DRAIN_TYPES[how], reason=reason) or ""
            except htcondor2.HTCondorException as exc:
                raise CondorUnavailable(f"drain {worker}: {exc}") from exc

    def undrain(self, worker: str) -> None:
        with POLICY.lock_for("collector"):
            try:
                startd = self._startd(worker)
                self.round_trips += 1
                startd.cancelDrainJobs()
            except htcondor2.HTCondorException as exc:
                raise CondorUnavailable(f"undrain {worker}: {exc}") from exc
