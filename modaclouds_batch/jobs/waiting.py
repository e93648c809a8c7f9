"""Why an idle job waits, from what the gateway already knows: its ad and the workers.

Pure (no HTCondor, no HTTP): the tracker hands in the job ads of one cycle and the workers
of one collector query, so explaining every idle job costs no extra round trip.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..condor.job_ad import JobAd


def _asks(ad: Mapping[str, Any]) -> dict[str, int]:
    return {"cpus": int(ad.get("RequestCpus") or 1), "memory_mb": int(ad.get("RequestMemory") or 0),
            "disk_mb": int(ad.get("RequestDisk") or 0) // 1024}  # RequestDisk is KiB


def _fits(asks: Mapping[str, int], offer: Mapping[str, int]) -> bool:
    return all(asks[key] <= offer.get(key, 0) for key in asks)


def wait_reasons(idle: Iterable[tuple[Mapping[str, Any], str | None]],
                 workers: list[Mapping[str, Any]]) -> dict[str, str]:
    """GatewayJobId -> why that idle job has not started, for each (ad, runtime) given.

    The first reason that applies, from the most to the least definite: input still being
    spooled; no worker at all; every worker draining; the runtime nobody offers; no worker
    large enough; the matching workers busy (with how many of our jobs wait ahead of it);
    otherwise the negotiator has not matched it yet.
    """
    idle = sorted(idle, key=lambda pair: (pair[0].get("QDate") or 0, pair[0].get("ClusterId") or 0,
                                          pair[0].get("ProcId") or 0))
    open_workers = [w for w in workers if not w.get("draining")]
    reasons: dict[str, str] = {}
    ahead_on: dict[tuple, int] = {}
    for ad, runtime in idle:
        job_id = str(ad.get("GatewayJobId"))
        if JobAd.of(ad).spooling_input:
            reasons[job_id] = "its input files are still being spooled to the schedd"
            continue
        if not workers:
            reasons[job_id] = "no worker is in the pool; it starts once one joins"
            continue
        if not open_workers:
            reasons[job_id] = ("every worker is draining or drained; it starts once an admin undrains one "
                               "(POST /workers/{name}/undrain) or another joins")
            continue
        candidates = [w for w in open_workers if not runtime or runtime in w.get("runtimes", ())]
        if not candidates:
            offered = sorted({r for w in open_workers for r in w.get("runtimes", ())})
            reasons[job_id] = (f"no worker that takes jobs offers runtime '{runtime}' "
                               f"(they offer: {', '.join(offered) or 'none'}); it starts once one joins")
            continue
        asks = _asks(ad)
        large_enough = [w for w in candidates if _fits(asks, w.get("largest_slot", {}))]
        if not large_enough:
            reasons[job_id] = (f"no worker is large enough for {asks['cpus']} CPUs, {asks['memory_mb']} MB "
                               f"memory and {asks['disk_mb']} MB disk; it starts once a larger one joins")
            continue
        key = tuple(sorted(w["name"] for w in large_enough))
        ahead = ahead_on.get(key, 0)
        ahead_on[key] = ahead + 1
        free = [w for w in large_enough if int(w.get("cpus_free") or 0) >= asks["cpus"]
                and int(w.get("memory_free_mb") or 0) >= asks["memory_mb"]]
        if not free:
            queued = f"; {ahead} of this gateway's jobs that fit the same workers are queued ahead of it" if ahead else ""
            reasons[job_id] = f"all matching slots are busy{queued}"
            continue
        reasons[job_id] = "waiting for HTCondor's negotiator to match it to a free slot (every few seconds)"
    return reasons
