"""A stand-in for CondorClient: an in-memory queue and history, counting round trips.

It keeps the condor contract (tests/condor_contract.py) the real client keeps on the real pool."""

from __future__ import annotations

import re
import time

from modaclouds_batch.condor.job_ad import CondorAction, JobAd, JobStatus
from modaclouds_batch.condor.schedd import CondorUnavailable


def _ids_in(constraint: str) -> set[str]:
    match = re.search(r"member\(GatewayJobId, \{(.*)\}\)", constraint)
    if not match:
        return set()
    return set(re.findall(r'"([^"]*)"', match.group(1)))


class FakeCondor:
    def __init__(self):
        self.queue: dict[str, dict] = {}
        self.history_ads: dict[str, dict] = {}
        self.round_trips = 0
        self.calls: list[tuple[str, str]] = []
        self.fail: set[str] = set()

    def thread_round_trips(self) -> int:
        return self.round_trips

    def _trip(self, name: str, constraint: str) -> None:
        self.round_trips += 1
        self.calls.append((name, constraint))
        if name in self.fail:
            raise CondorUnavailable(f"{name}: schedd down")

    def _select(self, ads: dict[str, dict], constraint: str) -> list[dict]:
        wanted = _ids_in(constraint)
        since = re.search(r"EnteredCurrentStatus >= (\d+)", constraint)
        if since:  # a change query (sd.changed_since_constraint): changed since, or one of the named
            at = int(since.group(1))
            return [dict(ad) for job_id, ad in ads.items() if job_id in wanted
                    or ad.get("EnteredCurrentStatus", 0) >= at or ad.get("JobCurrentStartExecutingDate", 0) >= at]
        status = re.search(r"&& JobStatus == (\d+)$", constraint)
        cluster = re.fullmatch(r"ClusterId == (\d+)", constraint)
        return [dict(ad) for job_id, ad in ads.items() if (not wanted or job_id in wanted)
                and (status is None or ad.get("JobStatus") == int(status.group(1)))
                and (cluster is None or ad.get("ClusterId") == int(cluster.group(1)))]

    def query(self, constraint, projection):
        """The queued ads the constraint names, as the real client returns them (JobAd)."""
        self._trip("query", constraint)
        return [JobAd(ad) for ad in self._select(self.queue, constraint)]

    def history(self, constraint, projection, match):
        self._trip("history", constraint)
        return [JobAd(ad) for ad in self._select(self.history_ads, constraint)[:match]]

    def retrieve(self, constraint):
        self._trip("retrieve", constraint)

    def edit(self, constraint, attr, value):
        self._trip("edit", constraint)
        if attr == "LeaveJobInQueue":
            for ad in self._select(self.queue, constraint):
                self.history_ads[ad["GatewayJobId"]] = self.queue.pop(ad["GatewayJobId"])
            return
        for ad in self._select(self.queue, constraint):
            self.queue[ad["GatewayJobId"]][attr] = {"true": True, "false": False}.get(value, value)

    def act(self, action, constraint, reason=None):
        action = CondorAction(action)
        self._trip(action.value, constraint)
        hit = self._select(self.queue, constraint)
        for ad in hit:
            job_id = ad["GatewayJobId"]
            if action is CondorAction.REMOVE:
                self.history_ads[job_id] = {**self.queue.pop(job_id), "JobStatus": int(JobStatus.REMOVED)}
            elif action is CondorAction.HOLD:  # a user hold: HoldReasonCode 1, the reason given
                self.queue[job_id].update(JobStatus=int(JobStatus.HELD), HoldReasonCode=1, HoldReason=f"{reason} (by user fake)")
            elif action is CondorAction.RELEASE:
                self.queue[job_id]["JobStatus"] = int(JobStatus.IDLE)
                for attr in ("HoldReasonCode", "HoldReason"):
                    self.queue[job_id].pop(attr, None)
            elif action is CondorAction.SUSPEND:
                self.queue[job_id]["JobStatus"] = int(JobStatus.SUSPENDED)
            elif action is CondorAction.CONTINUE:
                self.queue[job_id]["JobStatus"] = int(JobStatus.RUNNING)
        return {"TotalSuccess": len(hit)}

    def remove_quietly(self, constraint, reason):
        self.act(CondorAction.REMOVE, constraint, reason)

    def submit_spooled(self, description, itemdata=None):
        """Queue the job idle (one proc; arrays take their ids from the item data);
        ``submit_delay`` seconds stand for the spooling, ``clusters`` counts the submissions."""
        self._trip("submit", "")
        time.sleep(getattr(self, "submit_delay", 0.0))
        self.clusters = getattr(self, "clusters", 0) + 1
        cluster = len(self.queue) + len(self.history_ads) + 1
        ids = ([item["gateway_job_id"] for item in itemdata] if itemdata
               else [str(description["My.GatewayJobId"]).strip('"')])
        # A job submitted waiting for others keeps its gate (GatewayWaiting) until an edit opens it.
        gate = {"GatewayWaiting": True} if "My.GatewayWaiting" in description.keys() else {}
        for proc, job_id in enumerate(ids):
            self.queue[job_id] = {"GatewayJobId": job_id, "ClusterId": cluster, "ProcId": proc, "JobStatus": 1, **gate}
        return cluster, 0


def use_condor(gateway, condor):
    """Have every part of ``gateway`` that talks to the schedd talk to ``condor``, and check
    submissions against no collector (unit tests have none); returns ``condor``."""
    for part in (gateway, gateway.service, gateway.submission, gateway.retention, gateway.tracker):
        part.condor = condor
    gateway.submission.offers = gateway.submission.runtimes = None
    return condor


def tracker_without_sweeps(gateway, **kw):
    """A tracker on ``gateway``'s parts that never runs the expiry sweep (tests call cycles by hand)."""
    from modaclouds_batch.jobs.tracker import Tracker

    return Tracker(gateway.store, gateway.condor, 60, data=gateway.submission.data,
                   in_flight=gateway.submission.in_flight, jobs_ended=gateway.ends.jobs_ended, **kw)
