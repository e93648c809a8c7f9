"""Slot ads -> workers and a pool summary (pure functions, unit-testable)."""

from __future__ import annotations

from typing import Any, Iterable

from ..condor.collector import worker_name
from ..timefmt import epoch_to_iso


def _runtimes(value: Any) -> list[str]:
    return sorted({r.strip() for r in str(value or "").split(",") if r.strip()})


def _grow_largest(largest: dict[str, int], slot: dict[str, Any]) -> None:
    """The most one job could get from this slot: a partitionable slot's whole size."""
    offer = {
        "cpus": int(slot.get("TotalSlotCpus") or slot.get("Cpus") or 0),
        "memory_mb": int(slot.get("TotalSlotMemory") or slot.get("Memory") or 0),
        "disk_mb": int(slot.get("TotalSlotDisk") or slot.get("Disk") or 0) // 1024,  # KiB in the ad
    }
    if (offer["cpus"], offer["memory_mb"]) > (largest["cpus"], largest["memory_mb"]):
        largest.update(offer)


def workers_from_slots(slots: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One entry per startd, with its slots, capacity, activity, drain state and runtimes."""
    workers: dict[str, dict[str, Any]] = {}
    for slot in slots:
        name = worker_name(str(slot.get("Name", "")))
        worker = workers.setdefault(name, {
            "name": name, "machine": slot.get("Machine"), "slots": [], "runtimes": set(),
            "cpus_total": 0, "cpus_free": 0, "memory_total_mb": 0, "memory_free_mb": 0,
            "load": slot.get("TotalLoadAvg", slot.get("LoadAvg")), "draining": False, "drain_reason": None,
            "condor_version": slot.get("CondorVersion"), "started_at": epoch_to_iso(slot.get("DaemonStartTime")),
            "largest_slot": {"cpus": 0, "memory_mb": 0, "disk_mb": 0},
        })
        worker["runtimes"].update(_runtimes(slot.get("GatewayRuntimes")))
        if slot.get("Draining"):
            worker["draining"] = True
            worker["drain_reason"] = slot.get("DrainReason")
        cpus, memory = int(slot.get("Cpus") or 0), int(slot.get("Memory") or 0)
        dynamic = bool(slot.get("DynamicSlot"))
        if not dynamic:  # dynamic slots are carved out of a partitionable slot's totals
            _grow_largest(worker["largest_slot"], slot)
            worker["cpus_total"] += int(slot.get("TotalCpus") or cpus) if slot.get("PartitionableSlot") else cpus
            worker["memory_total_mb"] += int(slot.get("TotalMemory") or memory) if slot.get("PartitionableSlot") else memory
        if slot.get("State") == "Unclaimed" and not slot.get("Draining"):
            worker["cpus_free"] += cpus
            worker["memory_free_mb"] += memory
        worker["slots"].append({
            "name": slot.get("Name"), "type": slot.get("SlotType"), "state": slot.get("State"),
            "activity": slot.get("Activity"), "cpus": cpus, "memory_mb": memory,
            "job": slot.get("JobId"), "remote_owner": slot.get("RemoteOwner"),
        })
    for worker in workers.values():
        worker["runtimes"] = sorted(worker["runtimes"])
        states = {s["state"] for s in worker["slots"]}
        if worker["draining"]:
            worker["state"] = "drained" if "Claimed" not in states else "draining"
        else:
            worker["state"] = "busy" if worker["cpus_free"] == 0 and "Claimed" in states else "available"
        worker["cpus_total"] = int(worker["cpus_total"])
    return workers


def pool_summary(slots: list[dict[str, Any]], schedds: list[dict[str, Any]],
                 workers: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Totals over the slots; per worker from ``workers`` (default: built from the slots)."""
    workers = workers_from_slots(slots) if workers is None else workers
    counted = [s for s in slots if not s.get("PartitionableSlot")] or slots
    return {
        "workers": len(workers),
        "slots": {
            "total": len(counted),
            "claimed": sum(1 for s in counted if s.get("State") == "Claimed"),
            "idle": sum(1 for s in counted if s.get("State") == "Unclaimed"),
            "partitionable": sum(1 for s in slots if s.get("PartitionableSlot")),
        },
        "cpus": {"total": sum(w["cpus_total"] for w in workers.values()),
                 "free": sum(w["cpus_free"] for w in workers.values())},
        "memory_mb": {"total": sum(w["memory_total_mb"] for w in workers.values()),
                      "free": sum(w["memory_free_mb"] for w in workers.values())},
        "jobs": {"idle": sum(int(s.get("TotalIdleJobs") or 0) for s in schedds),
                 "running": sum(int(s.get("TotalRunningJobs") or 0) for s in schedds),
                 "held": sum(int(s.get("TotalHeldJobs") or 0) for s in schedds)},
        "runtimes": sorted({r for w in workers.values() for r in w["runtimes"]}),
        "per_worker": [
            {k: w[k] for k in ("name", "state", "cpus_total", "cpus_free", "memory_total_mb",
                               "memory_free_mb", "runtimes")}
            for w in sorted(workers.values(), key=lambda w: w["name"])
        ],
    }
