"""The one place that talks to HTCondor through the htcondor2 bindings.

The bindings read their configuration process-wide, so the client points
``CONDOR_CONFIG`` at the gateway's client config once, lazily, before the first call.
Calls hold the process-wide lock of condor/session.py (``POLICY``, shared with the
collector client) and are counted, so the tracker and the benchmark can report schedd
round trips.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import classad2
import htcondor2

from .job_ad import CondorAction, JobAd
from .submit_description import cluster_constraint
from .session import POLICY

log = logging.getLogger(__name__)
T = TypeVar("T")



class CondorUnavailable(Exception):
    """The schedd or collector does not answer."""


class CondorRefused(Exception):
    """The schedd answered but refused the request."""


ACTIONS = {
    CondorAction.REMOVE: htcondor2.JobAction.Remove,
    CondorAction.HOLD: htcondor2.JobAction.Hold,
    CondorAction.RELEASE: htcondor2.JobAction.Release,
    CondorAction.SUSPEND: htcondor2.JobAction.Suspend,
    CondorAction.CONTINUE: htcondor2.JobAction.Continue,
}


def classad_literal(value: bool | int | float | str) -> str:
    """A Python value as the ClassAd expression an edit sets (true/false, a number, a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return classad2.quote(value)


def configure(condor_config: Path | None) -> None:
    """Point the bindings at our client config (process-wide, so only once per path)."""
    POLICY.configure(condor_config)


def ad_to_dict(ad: classad2.ClassAd, projection: Iterable[str]) -> dict[str, Any]:
    """Plain Python values for the projected attributes that the ad has."""
    out: dict[str, Any] = {}
    for name in projection:
        if name not in ad:
            continue
        try:
            value = ad.eval(name)
        except Exception:  # an attribute that does not evaluate is the same as absent
            log.debug("attribute %s did not evaluate", name)
            continue
        if isinstance(value, classad2.Value):  # Undefined / Error
            continue
        out[name] = value
    return out


def locate_schedd() -> classad2.ClassAd:
    """The pool's schedd, as the collector advertises it.

    ``Collector.locate`` without a name looks for a schedd on this host's own config,
    which a gateway talking to a remote (or chrooted) pool does not have.
    """
    ads = htcondor2.Collector().locateAll(htcondor2.DaemonType.Schedd)
    if not ads:
        raise htcondor2.HTCondorException("the collector knows no schedd yet")
    return sorted(ads, key=lambda ad: str(ad.get("Name", "")))[0]


class CondorClient:
    def __init__(self, condor_config: Path | None):
        self.condor_config = condor_config
        self._schedd: htcondor2.Schedd | None = None
        self.round_trips = 0
        self._mine = threading.local()

    def _count_trip(self) -> None:
        self.round_trips += 1
        self._mine.trips = getattr(self._mine, "trips", 0) + 1

    def thread_round_trips(self) -> int:
        """Round trips made by the calling thread (the tracker's own, not the API's)."""
        return getattr(self._mine, "trips", 0)

    # --- plumbing ---------------------------------------------------------------

    def _schedd_handle(self) -> htcondor2.Schedd:
        if self._schedd is None:
            configure(self.condor_config)
            self._count_trip()
            self._schedd = htcondor2.Schedd(locate_schedd())
        return self._schedd

    def _call(self, what: str, fn: Callable[[htcondor2.Schedd], T], retry: bool = True) -> T:
        """One schedd call. After a pool restart the first call fails once on a stale
        security session, so a failed call is retried once on a freshly located schedd
        (not a submit, which might then be queued twice)."""
        with POLICY.lock_for("schedd"):
            attempts = 2 if retry else 1
            for attempt in range(attempts):
                try:
                    schedd = self._schedd_handle()
                    self._count_trip()
                    return fn(schedd)
                except htcondor2.HTCondorException as exc:
                    # Relocate: the schedd may have restarted on a new address.
                    self._schedd = None
                    if attempt == attempts - 1:
                        raise CondorUnavailable(f"{what}: {exc}") from exc
                    log.info("%s failed (%s); retrying once on a fresh connection", what, exc)
            raise AssertionError("unreachable")

    # --- operations ---------------------------------------------------------------

    def submit_spooled(self, description: htcondor2.Submit, itemdata: list[dict[str, str]] | None = None) -> tuple[int, int]:
        """Queue one proc (or one per item) and spool their input files; returns (cluster, first proc).

        All items go in one schedd transaction, however many there are.

        If spooling fails the half-made cluster is removed, so nothing is left behind.
        """
        with POLICY.lock_for("submit"):
            try:
                if itemdata:
                    result = self._call("submit", lambda s: s.submit(description, spool=True, itemdata=iter(itemdata)),
                                        retry=False)
                else:
                    result = self._call("submit", lambda s: s.submit(description, count=1, spool=True), retry=False)
            except CondorUnavailable as exc:
                if self._answers():
                    raise CondorRefused(str(exc)) from exc
                raise
            cluster = result.cluster()
            try:
                self._call("spool", lambda s: s.spool(result))
            except CondorUnavailable:
                self.remove_quietly(cluster_constraint(cluster), "input spooling failed")
                raise
            return cluster, result.first_proc()

    def _answers(self) -> bool:
        try:
            self._call("ping", lambda s: s.query("false", ["ClusterId"], limit=1))
            return True
        except CondorUnavailable:
            return False

    def remove_quietly(self, constraint: str, reason: str) -> None:
        try:
            self.act(CondorAction.REMOVE, constraint, reason)
        except CondorUnavailable as exc:
            log.warning("could not remove jobs %s after failure (%s): %s", constraint, reason, exc)

    def query(self, constraint: str, projection: list[str]) -> list[JobAd]:
        ads = self._call("query", lambda s: s.query(constraint, projection))
        return [JobAd(ad_to_dict(ad, projection)) for ad in ads]

    def history(self, constraint: str, projection: list[str], match: int) -> list[JobAd]:
        ads = self._call("history", lambda s: s.history(constraint, projection, match=match))
        return [JobAd(ad_to_dict(ad, projection)) for ad in ads]

    def retrieve(self, constraint: str) -> None:
        """Bring spooled outputs back into each job's submit directory."""
        self._call("retrieve", lambda s: s.retrieve(constraint))

    def edit(self, constraint: str, attr: str, value: bool | int | float | str) -> None:
        """Set ``attr`` to ``value`` (a Python value, written as its ClassAd literal) on the matched jobs."""
        literal = classad_literal(value)
        self._call("edit", lambda s: s.edit(constraint, attr, literal))

    def act(self, action: CondorAction, constraint: str, reason: str | None = None) -> dict[str, int]:
        """Apply a job action; returns HTCondor's counts (e.g. TotalSuccess, TotalNotFound)."""
        action = CondorAction(action)
        # As a (reason, code) pair: htcondor2 25's Schedd.act drops a plain string reason
        # (only None or a tuple is read) and the job's HoldReason would not say why.
        why = None if reason is None else (reason, None)
        ad = self._call(action.value, lambda s: s.act(ACTIONS[action], constraint, why))
        return {k: int(ad[k]) for k in ad.keys() if k.startswith("Total")}

    def ping(self) -> dict[str, dict[str, Any]]:
        """Whether the collector and the schedd answer, each with an error when not."""
        report: dict[str, dict[str, Any]] = {}
        with POLICY.lock_for("schedd"):
            configure(self.condor_config)
            try:
                self._count_trip()
                ad = locate_schedd()
                report["collector"] = {"ok": True}
            except htcondor2.HTCondorException as exc:
                report["collector"] = {"ok": False, "error": str(exc)}
                report["schedd"] = {"ok": False, "error": "not located: the collector does not answer"}
                self._schedd = None
                return report
            try:
                self._count_trip()
                htcondor2.Schedd(ad).query("false", ["ClusterId"], limit=1)
                report["schedd"] = {"ok": True, "name": ad.get("Name")}
            except htcondor2.HTCondorException as exc:
                self._schedd = None
                report["schedd"] = {"ok": False, "error": str(exc)}
        return report
