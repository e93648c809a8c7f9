"""Who hears that jobs ended: the tracker tells, dialects (e.g. TES deliveries) listen."""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)


class JobEnds:
    def __init__(self) -> None:
        self._listeners: list[Callable[[list[str]], None]] = []

    def on_jobs_ended(self, listener: Callable[[list[str]], None]) -> None:
        """Have ``listener(job_ids)`` called, on the tracker's thread, after every cycle in which
        jobs reached a final state, and once after its first cycle (possibly with no ids): work a
        listener owes finished jobs is kept in the store, so that first call lets it catch up on
        what a stopped gateway left undone. A listener must be quick (hand slow work to a thread)."""
        self._listeners.append(listener)

    def jobs_ended(self, job_ids: list[str]) -> None:
        for listener in self._listeners:
            try:
                listener(list(job_ids))
            except Exception:  # one listener's bug must not stop tracking nor the others
                log.exception("a job-end listener failed")
