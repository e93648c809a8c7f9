"""A stand-in for CondorClient: an in-memory queue and history, counting round trips."""

from __future__ import annotations

import re
import time

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
        return [dict(ad) for job_id, ad in ads.items() if not wanted or job_id in wanted]

    def query(self, constraint, projection):
        self._trip("query", constraint)
        return self._select(self.queue, constraint)

    def history(self, constraint, projection, match):
        self._trip("history", constraint)
        return self._select(self.history_ads, constraint)[:match]

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
        self._trip(action, constraint)
        hit = self._select(self.queue, constraint)
        if action == "remove":
            for ad in hit:
                self.history_ads[ad["GatewayJobId"]] = {**self.queue.pop(ad["GatewayJobId"]), "JobStatus": 3}
        return {"TotalSuccess": len(hit)}

    def remove_quietly(self, constraint, reason):
        self.act("remove", constraint, reason)

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
