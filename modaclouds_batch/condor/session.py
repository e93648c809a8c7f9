"""The process-wide HTCondor session policy, stated once for every client in the process.

The htcondor2 bindings keep process-wide state: the configuration they read (``CONDOR_CONFIG``,
``reload_config``) and the security sessions they cache per daemon. So, in this process:

- The bindings are configured once per config path (``configure``), before any client's
  first call, and never behind another client's back.
- Every call into the bindings, whichever client makes it (the schedd client's queue,
  submit, spool, act, edit, history and ping; the collector client's queries, drains and
  undrains), holds ``POLICY.lock_for(kind)``. Today every kind gets the same re-entrant lock:
  calls are serialised per process, not per client, so a tracker cycle, an API submission
  and a pool-page collector query never interleave inside the bindings.

To let submissions run in parallel (say, once the bindings are known to be safe for it),
give the ``"submit"`` kind its own lock in ``CallPolicy.lock_for``: one line, here.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import ContextManager

import htcondor2


class CallPolicy:
    """Which lock a call of each kind holds ("submit", "schedd", "collector", "config")."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._configured_for: str | None = None

    def lock_for(self, kind: str) -> ContextManager:
        """The lock a call of ``kind`` holds: the one process-wide lock, for every kind."""
        return self._lock

    def configure(self, condor_config: Path | None) -> None:
        """Point the bindings at our client config (process-wide, so only once per path)."""
        wanted = str(condor_config) if condor_config else None
        with self.lock_for("config"):
            if self._configured_for == wanted:
                return
            if wanted:
                os.environ["CONDOR_CONFIG"] = wanted
            htcondor2.reload_config()
            self._configured_for = wanted


# The one policy of this process; every condor client uses it.
POLICY = CallPolicy()
