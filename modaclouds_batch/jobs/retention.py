"""Retention: jobs past their ttl removed, expired and long-finished ones cleaned up, data
expired, idempotency keys forgotten; job folders no submission finished removed at start.

Knows jobs, the store and the condor adapter; knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..condor import submit_description as sd
from ..condor.job_ad import CondorAction
from ..condor.schedd import CondorClient, CondorUnavailable
from ..data.service import DataService
from ..home import job_dir_owner
from ..settings import Settings
from ..store import Store
from ..timefmt import to_iso
from .states import FINAL_STATES, JobState

log = logging.getLogger(__name__)


class Retention:
    def __init__(self, settings: Settings, store: Store, condor: CondorClient, data: DataService):
        self.settings = settings
        self.store = store
        self.condor = condor
        self.data = data

    def sweep_expired(self) -> dict[str, int]:
        """Remove jobs whose ttl passed, clean up expired and long-finished ones, expire data.

        Active jobs past their ttl are removed from the schedd in one call; a later sweep,
        once they are final, cleans them up.
        """
        now = datetime.now(timezone.utc)
        report = {"removed": 0, "cleaned": 0, "data": 0}
        due = self.store.jobs_past_expiry(to_iso(now))
        active = [job for job in due if not JobState(job["state"]).is_final]
        if active:
            constraint = sd.jobs_constraint(self.store.instance_id, [j["id"] for j in active])
            try:
                self.condor.act(CondorAction.REMOVE, constraint, "the job's ttl has passed")
                report["removed"] = len(active)
            except CondorUnavailable as exc:
                log.warning("could not remove %d jobs past their ttl: %s", len(active), exc)
        finished = [job for job in due if JobState(job["state"]).is_final]
        retention = self.settings.job_retention_seconds
        if retention:
            cutoff = to_iso(now - timedelta(seconds=retention))
            finished += self.store.finished_before((s.value for s in FINAL_STATES), cutoff)
        for job in {j["id"]: j for j in finished}.values():
            shutil.rmtree(job["job_dir"], ignore_errors=True)
            self.store.mark_expired(job["id"], to_iso(now))
            report["cleaned"] += 1
        report["data"] = self.data.expire()
        report["idempotency_keys"] = self.store.sweep_idempotency_keys(to_iso(now))
        return report


def remove_orphan_dirs(jobs_dir: Path, known: set[str], in_flight: set[str], instance_id: str) -> int:
    """Job folders left by a submission this gateway never finished; returns how many.

    Only folders whose marker names ``instance_id`` are removed: a folder another gateway
    made (another database on the same home) or one without a marker is left alone.
    """
    removed = 0
    foreign = 0
    if not jobs_dir.is_dir():
        return 0
    for entry in jobs_dir.iterdir():
        if not entry.is_dir() or str(entry) in known or entry.name in in_flight:
            continue
        if job_dir_owner(entry) != instance_id:
            foreign += 1
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    if foreign:
        log.warning("left %d folders in %s that this gateway (instance %s) has no record of and did not make",
                    foreign, jobs_dir, instance_id)
    return removed
