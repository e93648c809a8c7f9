"""See, drain and extend the pool. Admin-only; knows workers, not HTTP."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Callable

from ..access.audit import AuditLog
from ..access.identity import Actor
from ..condor.collector import DRAIN_TYPES, CollectorClient
from ..condor.schedd import CondorUnavailable
from ..errors import BackendUnavailable, Conflict, GatewayError, InvalidRequest, NotFound
from ..store import Store
from ..timefmt import now_iso
from .providers import Provider
from .workers import pool_summary, workers_from_slots

log = logging.getLogger(__name__)
# How long the gateway shows a worker as its startd answered right after a drain or undrain,
# while the collector's copy (updated every UPDATE_INTERVAL) has not caught up yet.
FRESH_VIEW_SECONDS = 60.0


class InfraService:
    def __init__(self, store: Store, collector: CollectorClient, audit: AuditLog,
                 providers: dict[str, Provider], cache_seconds: float = 3.0, lost_after: float = 120.0,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.collector = collector
        self.audit = audit
        self.providers = providers
        self.cache_seconds = cache_seconds
        self.lost_after = lost_after
        self._clock = clock
        self._missing_since: dict[str, float] = {}  # added worker -> when the collector first lacked it
        self._cache: tuple[float, list, list] | None = None
        self._lock = threading.Lock()
        # worker -> (monotonic deadline, the worker as its startd said after our action)
        self._fresh: dict[str, tuple[float, dict[str, Any]]] = {}

    # --- reading the pool -------------------------------------------------------------

    def _ads(self, fresh: bool = False) -> tuple[list, list]:
        """Slot and schedd ads, from one collector query at most every few seconds."""
        with self._lock:
            if not fresh and self._cache and time.monotonic() - self._cache[0] < self.cache_seconds:
                return self._cache[1], self._cache[2]
            try:
                slots, schedds = self.collector.pool_ads()
            except CondorUnavailable as exc:
                raise BackendUnavailable(f"the collector does not answer; retry later ({exc})") from exc
            self._cache = (time.monotonic(), slots, schedds)
            return slots, schedds

    def summary(self, actor: Actor) -> dict[str, Any]:
        actor.require_admin("the pool summary")
        slots, schedds = self._ads()
        return pool_summary(slots, schedds, self._workers())

    def workers(self, actor: Actor) -> list[dict[str, Any]]:
        actor.require_admin("the worker list")
        workers = self._workers()
        return [self._annotate(w) for w in sorted(workers.values(), key=lambda w: w["name"])]

    def worker(self, actor: Actor, name: str) -> dict[str, Any]:
        """One worker, as /workers shows it (a drain just made included)."""
        actor.require_admin("worker details")
        workers = self._workers()
        if name not in workers:
            raise NotFound(f"no worker named {name}; GET /workers lists them")
        return self._annotate(workers[name])

    def _ask_startd(self, name: str) -> dict[str, Any]:
        """The worker as its startd says now (not the collector's copy, which lags)."""
        try:
            slots = self.collector.worker_slots(name)
        except CondorUnavailable as exc:
            raise BackendUnavailable(f"could not read worker {name}; retry later ({exc})") from exc
        worker = workers_from_slots(slots or []).get(name)
        if worker is None:
            raise NotFound(f"no worker named {name}; GET /workers lists them")
        return worker

    def _workers(self) -> dict[str, dict[str, Any]]:
        """Workers from the cached collector answer, with what a startd told us after a drain
        or undrain we just made standing in until the collector's copy says the same."""
        workers = workers_from_slots(self._ads()[0])
        now = time.monotonic()
        with self._lock:
            for name, (deadline, fresh) in list(self._fresh.items()):
                seen = workers.get(name)
                if now > deadline or seen is None or seen["draining"] == fresh["draining"]:
                    del self._fresh[name]
                else:
                    workers[name] = fresh
        return workers

    def _annotate(self, worker: dict[str, Any]) -> dict[str, Any]:
        started = self.store.provisioned_worker(worker["name"])
        return {**worker, "provider": started["provider"] if started else None,
                "managed_by_gateway": started is not None}

    def runtimes(self) -> set[str]:
        """Runtimes some worker offers now (for checking a job's requested runtime)."""
        return {r for w in self._workers().values() for r in w["runtimes"]}

    def capacity(self) -> list[dict[str, Any]]:
        """Every worker as the collector last said (cached for pool_cache_seconds): for
        explaining why jobs wait, with no actor and no provider annotations."""
        return list(self._workers().values())

    def offers(self) -> list[dict[str, int]]:
        """The largest slot each worker could give one job (for checking resource requests)."""
        return [w["largest_slot"] for w in self.capacity()]

    # --- draining ------------------------------------------------------------------------

    def drain(self, actor: Actor, name: str, how: str = "graceful", request_id: str | None = None) -> dict[str, Any]:
        actor.require_admin("draining workers")
        if not isinstance(how, str) or how not in DRAIN_TYPES:
            raise InvalidRequest(f"how must be one of {', '.join(DRAIN_TYPES)}", field="how")
        worker = self._ask_startd(name)
        if worker["draining"]:
            raise Conflict(f"worker {name} is already {worker['state']}; undrain it first")
        try:
            self.collector.drain(name, how, reason=f"drained by {actor.user} through the gateway")
        except CondorUnavailable as exc:
            if self._ask_startd(name)["draining"]:  # another drain won the race
                raise Conflict(f"worker {name} is already draining; undrain it first") from exc
            raise BackendUnavailable(f"could not drain {name}: {exc}") from exc
        self.audit.record(actor, "worker.drain", name, detail={"how": how}, request_id=request_id)
        return self._after_change(name)

    def undrain(self, actor: Actor, name: str, request_id: str | None = None) -> dict[str, Any]:
        actor.require_admin("undraining workers")
        worker = self._ask_startd(name)
        if not worker["draining"]:
            raise Conflict(f"worker {name} is not draining")
        try:
            self.collector.undrain(name)
        except CondorUnavailable as exc:
            raise BackendUnavailable(f"could not undrain {name}: {exc}") from exc
        self.audit.record(actor, "worker.undrain", name, request_id=request_id)
        return self._after_change(name)

    def _after_change(self, name: str) -> dict[str, Any]:
        """The worker as its startd says right after the action; /workers shows the same
        until the collector's copy catches up."""
        worker = self._ask_startd(name)
        with self._lock:
            self._fresh[name] = (time.monotonic() + FRESH_VIEW_SECONDS, worker)
        return self._annotate(worker)

    # --- extending the pool ------------------------------------------------------------------

    def provision(self, actor: Actor, provider_name: str, params: dict[str, Any],
                  request_id: str | None = None) -> dict[str, Any]:
        actor.require_admin("adding workers")
        provider = self.providers.get(provider_name)
        if provider is None:
            raise InvalidRequest(
                f"no provider '{provider_name}'; configured providers: {', '.join(self.providers) or 'none'}",
                field="provider")
        validate = getattr(provider, "validate", None)
        if validate:
            validate(params)
        record = self._record("provision", provider_name, actor, params)
        self.audit.record(actor, "worker.provision", record["id"], detail={"provider": provider_name},
                          request_id=request_id)
        self._in_background(record, lambda: provider.provision(params))
        return record

    def retire(self, actor: Actor, name: str, request_id: str | None = None) -> dict[str, Any]:
        actor.require_admin("retiring workers")
        started = self.store.provisioned_worker(name)
        if started is None:
            raise Conflict(f"worker {name} was not started by the gateway; drain it instead")
        provider = self.providers[started["provider"]]
        record = self._record("retire", started["provider"], actor, {}, worker=name)
        self.audit.record(actor, "worker.retire", name, request_id=request_id)

        def retire() -> str:
            try:
                self.collector.drain(name, "graceful", reason="retiring")
            except CondorUnavailable as exc:
                log.warning("could not drain %s before retiring it: %s", name, exc)
            provider.retire(name)
            self.store.update_worker_request(started["id"], {"status": "retired"})
            return name

        self._in_background(record, retire)
        return record

    def requests(self, actor: Actor, limit: int = 100) -> list[dict[str, Any]]:
        actor.require_admin("worker requests")
        return self.store.worker_requests(limit)

    # --- workers the gateway added that left the pool ---------------------------------------

    def check_added_workers(self, at_start: bool = False) -> int:
        """Keep the records of added workers true: 'lost' once a worker's startd has been
        missing from the collector for ``lost_after`` seconds (a pool restart kills local
        nodes, a VM dies), 'ready' again if it comes back. At start, a provider that can
        tell (local: does the node's condor_master run?) settles a missing one at once.
        A collector that does not answer proves nothing. Returns how many records changed."""
        added = self.store.added_workers()
        if not added:
            self._missing_since.clear()
            return 0
        try:
            present: set[str] | None = set(workers_from_slots(self._ads()[0]))
        except BackendUnavailable as exc:
            log.warning("could not check the workers the gateway added: %s", exc)
            present = None
        now, changed = self._clock(), 0
        for record in added:
            name = record["worker"]
            if present is not None and name in present:
                self._missing_since.pop(name, None)
                if record["status"] == "lost":
                    log.info("worker %s is back in the pool", name)
                    self.store.update_worker_request(record["id"], {"status": "ready", "error": None, "lost_at": None})
                    changed += 1
                continue
            if record["status"] == "lost":
                continue
            if self._stopped(record, at_start):
                why = "its node is not running (the pool was restarted or the node stopped)"
            elif present is not None and now - self._missing_since.setdefault(name, now) >= self.lost_after:
                why = f"its startd has been missing from the collector for {self.lost_after:.0f} s or more"
            else:
                continue
            log.warning("worker %s the gateway added is lost: %s", name, why)
            self.store.update_worker_request(record["id"], {
                "status": "lost", "lost_at": now_iso(),
                "error": f"{why}; DELETE /workers/{name} cleans up what is left of it, POST /workers adds another"})
            changed += 1
        return changed

    def _stopped(self, record: dict[str, Any], at_start: bool) -> bool:
        """At start only: does the worker's provider say for sure that the worker is gone?"""
        provider = self.providers.get(record["provider"])
        is_running = getattr(provider, "is_running", None)
        return at_start and is_running is not None and is_running(record["worker"]) is False

    def _record(self, action: str, provider: str, actor: Actor, params: dict, worker: str | None = None) -> dict:
        record = {"id": str(uuid.uuid4()), "action": action, "provider": provider, "requested_by": actor.user,
                  "params": params, "status": "running", "worker": worker, "created_at": now_iso()}
        self.store.insert_worker_request(record)
        return record

    def _in_background(self, record: dict, work) -> None:
        """Providers may take minutes (a VM boots): the request answers at once, the record tells."""
        def run():
            try:
                worker = work()
                self.store.update_worker_request(record["id"], {
                    "status": "ready" if record["action"] == "provision" else "done",
                    "worker": worker, "finished_at": now_iso()})
            except (GatewayError, OSError) as exc:
                message = getattr(exc, "message", str(exc))
                log.warning("worker request %s failed: %s", record["id"], message)
                self.store.update_worker_request(record["id"], {
                    "status": "failed", "error": message, "finished_at": now_iso()})
            except Exception as exc:  # recorded so the admin sees it; logged with the trace
                log.exception("worker request %s failed", record["id"])
                self.store.update_worker_request(record["id"], {
                    "status": "failed", "error": repr(exc), "finished_at": now_iso()})
            with self._lock:
                self._cache = None
        threading.Thread(target=run, name=f"worker-request-{record['id'][:8]}", daemon=True).start()
