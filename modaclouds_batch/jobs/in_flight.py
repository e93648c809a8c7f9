"""The jobs between their schedd submit and their row in the store.

Submission adds them; the tracker and the orphan-folder sweep leave them be (they look like
orphans until the row is written). One set shared by the three, behind one lock.
"""

from __future__ import annotations

import threading
from typing import Iterable


class InFlight:
    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, job_id: str) -> None:
        with self._lock:
            self._ids.add(job_id)

    def discard(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            self._ids.difference_update(job_ids)

    def snapshot(self) -> set[str]:
        """The ids now in flight (a copy: the set keeps changing under the lock)."""
        with self._lock:
            return set(self._ids)
