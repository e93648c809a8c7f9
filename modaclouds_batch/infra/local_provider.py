"""The built-in provider: another execute node (its own condor_master and startd) here.

Used with the gateway's own managed pool. Each worker gets a node name (``exec-<n>``),
its own folders under the pool folder, and joins the same collector; its slots appear
in /workers as ``<node>@<host>``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from typing import Any

from ..condor import pool as pool_tooling
from ..condor.pool import nodes as pool_nodes
from ..condor.collector import CollectorClient, worker_name
from ..condor.schedd import CondorUnavailable
from ..errors import BackendRefused, InvalidRequest

log = logging.getLogger(__name__)
APPEAR_TIMEOUT = 60.0
MAX_CPUS = 64
_RUNTIME_RE = re.compile(r"^[A-Za-z0-9._+-]{1,64}$")


class LocalProvider:
    name = "local"

    def __init__(self, settings):
        self.settings = settings
        self.collector = CollectorClient(settings.condor_config)
        self._lock = threading.Lock()

    def _params(self, params: dict[str, Any]) -> tuple[int, tuple[str, ...]]:
        cpus = params.get("cpus", 2)
        if not isinstance(cpus, int) or isinstance(cpus, bool) or not 1 <= cpus <= MAX_CPUS:
            raise InvalidRequest(f"params.cpus must be a whole number from 1 to {MAX_CPUS}", field="cpus")
        runtimes = params.get("runtimes", ["bash", "python3"])
        if not isinstance(runtimes, list) or not all(isinstance(r, str) and _RUNTIME_RE.match(r) for r in runtimes):
            raise InvalidRequest("params.runtimes must be a list of names such as python3", field="runtimes")
        return cpus, tuple(runtimes)

    def validate(self, params: dict[str, Any]) -> None:
        self._params(params)

    def provision(self, params: dict[str, Any]) -> str:
        cpus, runtimes = self._params(params)
        node = f"exec-{uuid.uuid4().hex[:8]}"
        with self._lock:
            try:
                pool_nodes.add_execute_node(self.settings, node, num_cpus=cpus, runtimes=runtimes, log=log.info)
            except pool_tooling.PoolError as exc:
                raise BackendRefused(f"could not start a local execute node: {exc}") from exc
        try:
            return self._wait_for(node)
        except BackendRefused:
            self._stop_quietly(node)  # a node that never joined is not left running
            raise

    def _stop_quietly(self, node: str) -> None:
        try:
            pool_nodes.remove_execute_node(self.settings, node, log=log.info)
        except pool_tooling.PoolError as exc:
            log.warning("could not stop execute node %s after it failed to join: %s", node, exc)

    def _wait_for(self, node: str) -> str:
        """The worker's name once its startd has joined the collector."""
        deadline = time.monotonic() + APPEAR_TIMEOUT
        while time.monotonic() < deadline:
            try:
                slots, _ = self.collector.pool_ads()
            except CondorUnavailable:
                slots = []
            for slot in slots:
                name = worker_name(str(slot.get("Name", "")))
                if name.startswith(f"{node}@"):
                    return name
            time.sleep(1.0)
        raise BackendRefused(f"execute node {node} started but did not join the collector within "
                             f"{APPEAR_TIMEOUT:.0f} s; see its logs under the pool folder")

    def is_running(self, worker: str) -> bool | None:
        """Whether the node behind ``worker`` has a running condor_master (None: cannot tell)."""
        try:
            return worker.split("@", 1)[0] in pool_nodes.execute_nodes(self.settings)
        except (pool_tooling.PoolError, OSError) as exc:
            log.warning("could not tell whether execute node %s runs: %s", worker, exc)
            return None

    def retire(self, worker: str) -> None:
        node = worker.split("@", 1)[0]
        with self._lock:
            try:
                pool_nodes.remove_execute_node(self.settings, node, log=log.info)
            except pool_tooling.PoolError as exc:
                raise BackendRefused(f"could not stop execute node {node}: {exc}") from exc
