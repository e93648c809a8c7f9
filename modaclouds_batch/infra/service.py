"""See, drain and extend the pool. Admin-only; knows workers, not HTTP."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

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


class InfraService:
    def __init__(self, store: Store, collector: CollectorClient, audit: AuditLog,
                 providers: dict[str, Provider], cache_seconds: float = 3.0):
        self.store = store
        self.collector = collector
        self.audit = audit
        self.providers = providers
        self.cache_seconds = cache_seconds
        self._cache: tuple[float, list, list] | None = None
        self._lock = threading.Lock()

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
        return pool_summary(*self._ads())

    def workers(self, actor: Actor) -> list[dict[str, Any]]:
        actor.require_admin("the worker list")
        workers = workers_from_slots(self._ads()[0])
        return [self._annotate(w) for w in sorted(workers.values(), key=lambda w: w["name"])]

    def worker(self, actor: Actor, name: str, fresh: bool = False) -> dict[str, Any]:
        actor.require_admin("worker details")
        workers = workers_from_slots(self._ads(fresh)[0])
        if name not in workers:
            raise NotFound(f"no worker named {name}; GET /workers lists them")
        return self._annotate(workers[name])

    def _annotate(self, worker: dict[str, Any]) -> dict[str, Any]:
        started = self.store.provisioned_worker(worker["name"])
        return {**worker, "provider": started["provider"] if started else None,
                "managed_by_gateway": started is not None}

    def runtimes(self) -> set[str]:
        """Runtimes some worker offers now (for checking a job's requested runtime)."""
        return {r for w in workers_from_slots(self._ads()[0]).values() for r in w["runtimes"]}

    def capacity(self) -> list[dict[str, Any]]:
        """Every worker as the collector last said (cached for pool_cache_seconds): for
        explaining why jobs wait, with no actor and no provider annotations."""
        return list(workers_from_slots(self._ads()[0]).values())

    def offers(self) -> list[dict[str, int]]:
        """The largest slot each worker could give one job (for checking resource requests)."""
        return [w["largest_slot"] for w in self.capacity()]

    # --- draining ------------------------------------------------------------------------

    def drain(self, actor: Actor, name: str, how: str = "graceful", request_id: str | None = None) -> dict[str, Any]:
        if how not in DRAIN_TYPES:
            raise InvalidRequest(f"how must be one of {', '.join(DRAIN_TYPES)}", field="how")
        worker = self.worker(actor, name, fresh=True)
        if worker["draining"]:
            raise Conflict(f"worker {name} is already {worker['state']}; undrain it first")
        try:
            self.collector.drain(name, how, reason=f"drained by {actor.user} through the gateway")
        except CondorUnavailable as exc:
            raise BackendUnavailable(f"could not drain {name}: {exc}") from exc
        self.audit.record(actor, "worker.drain", name, detail={"how": how}, request_id=request_id)
        return self._after_change(actor, name)

    def undrain(self, actor: Actor, name: str, request_id: str | None = None) -> dict[str, Any]:
        worker = self.worker(actor, name, fresh=True)
        if not worker["draining"]:
            raise Conflict(f"worker {name} is not draining")
        try:
            self.collector.undrain(name)
        except CondorUnavailable as exc:
            raise BackendUnavailable(f"could not undrain {name}: {exc}") from exc
        self.audit.record(actor, "worker.undrain", name, request_id=request_id)
        return self._after_change(actor, name)

    def _after_change(self, actor: Actor, name: str) -> dict[str, Any]:
        with self._lock:
            self._cache = None
        return self.worker(actor, name)

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
