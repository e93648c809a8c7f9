"""Follows the schedd's job event log, so the tracker hears of a change when it happens.

HTCondor's guidance for job trackers is to follow the event log rather than poll the
queue. The managed pool's schedd writes every job's events into one global event log
(``EVENT_LOG`` in its daemon config, see pool/config.py), and the gateway's client config
names that file as ``GATEWAY_SCHEDD_EVENT_LOG``: where the gateway can read it (same host,
same path), a follower thread reads it with ``htcondor2.JobEventLog`` and calls
``on_change`` for every event that moves a job (it started, ended, was held, released,
suspended...). Nothing is decided from the events themselves: they only say "look now",
and the tracker's poll stays the safety net when there is no such file, it is rotated
away, or an event is missed.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable

import htcondor2

log = logging.getLogger(__name__)

# The client-config knob that names the schedd's global event log (pool/config.py).
EVENT_LOG_KNOB = "GATEWAY_SCHEDD_EVENT_LOG"
# Events that say nothing the tracker records: a new submission (the submitter wakes the
# tracker itself), periodic resource-usage updates and attribute dumps.
QUIET_EVENTS = frozenset({
    htcondor2.JobEventType.SUBMIT,
    htcondor2.JobEventType.IMAGE_SIZE,
    htcondor2.JobEventType.JOB_AD_INFORMATION,
})
# Seconds the follower waits for an event before it checks for a stop or a rotated file.
WAIT_SECONDS = 1
# Seconds between looks for a log file that does not exist (yet).
ABSENT_RETRY_SECONDS = 5.0


def event_log_path() -> Path | None:
    """The schedd event log the client config names, or None (bindings configured already)."""
    value = htcondor2.param.get(EVENT_LOG_KNOB)
    return Path(value) if value else None


class EventLogFollower:
    """A thread reading new events from ``path`` and calling ``on_change`` for each that matters.

    Only events written after the follower opened the file count: what was there before
    is the queue's business (the tracker's first cycle reads the queue).
    """

    def __init__(self, path: Path, on_change: Callable[[], None]):
        self.path = path
        self.on_change = on_change
        self.events_seen = 0
        # Set once the file is open and what it held before is skipped; set when it was found absent.
        self.following = threading.Event()
        self.absent = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="schedd-events", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        skip_existing = True
        while not self._stop.is_set():
            try:
                identity = os.stat(self.path).st_ino
            except OSError:
                self.absent.set()
                self._stop.wait(ABSENT_RETRY_SECONDS)
                skip_existing = False  # a file made from now on holds only new events
                continue
            try:
                self._follow(identity, skip_existing)
            except Exception as exc:  # a torn or unreadable log: the poll covers, look again soon
                log.warning("following the schedd event log %s failed (%s); retrying", self.path, exc)
                self._stop.wait(ABSENT_RETRY_SECONDS)
            # Reopened (rotated or recreated by a restarted pool): everything in it is new.
            skip_existing = False

    def _follow(self, identity: int, skip_existing: bool) -> None:
        with htcondor2.JobEventLog(str(self.path)) as events:
            if skip_existing:
                for _ in events.events(stop_after=0):
                    pass
            self.following.set()
            while not self._stop.is_set():
                for event in events.events(stop_after=WAIT_SECONDS):
                    self.events_seen += 1
                    if event.type not in QUIET_EVENTS:
                        self.on_change()  # cheap: the tracker coalesces its wake-ups
                    if self._stop.is_set():
                        return
                try:
                    if os.stat(self.path).st_ino != identity:
                        return  # rotated: the schedd writes a new file under the same name
                except OSError:
                    return
