"""Following the schedd's event log (condor/events.py): a job's change wakes the tracker at once.

The log is a real HTCondor event log text, read by the real htcondor2.JobEventLog.
"""

from __future__ import annotations

import threading
from pathlib import Path

from modaclouds_batch.condor.events import EventLogFollower
from modaclouds_batch.jobs.tracker import MIN_GAP, Tracker

from .fakes import FakeCondor

SUBMITTED = """000 (012.000.000) 2026-12-03 06:00:00 Job submitted from host: <127.0.0.1:9619?addrs=127.0.0.1-9619>
...
"""
EXECUTING = """001 ({cluster:03d}.000.000) 2026-12-03 06:00:01 Job executing on host: <127.0.0.1:9620?addrs=127.0.0.1-9620>
...
"""
HELD = """012 ({cluster:03d}.000.000) 2026-12-03 06:00:02 Job was held.
	via condor_hold (by user batch)
	Code 1 Subcode 0
...
"""
DEADLINE = 30.0


class Wakes:
    """Counts the follower's calls; ``wait_for(n)`` returns once there were ``n``."""

    def __init__(self):
        self.count = 0
        self._changed = threading.Condition()

    def __call__(self) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def wait_for(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.count >= count, DEADLINE)


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


def test_a_job_event_written_after_the_follower_started_wakes_it_and_older_ones_do_not(tmp_path):
    log = tmp_path / "EventLog"
    log.write_text(EXECUTING.format(cluster=11))  # there before the follower: the queue's business
    wakes = Wakes()
    follower = EventLogFollower(log, wakes)
    follower.start()
    try:
        assert follower.following.wait(DEADLINE)
        append(log, SUBMITTED)  # a submission wakes the tracker itself: not counted
        append(log, HELD.format(cluster=12))
        assert wakes.wait_for(1)
        append(log, EXECUTING.format(cluster=13))
        assert wakes.wait_for(2)
        assert wakes.count == 2
        assert follower.events_seen == 3
    finally:
        follower.shutdown()


def test_a_log_that_appears_later_is_followed_from_its_first_event(tmp_path, monkeypatch):
    import modaclouds_batch.condor.events as events

    monkeypatch.setattr(events, "ABSENT_RETRY_SECONDS", 0.05)
    log = tmp_path / "EventLog"
    wakes = Wakes()
    follower = EventLogFollower(log, wakes)
    follower.start()
    try:
        assert follower.absent.wait(DEADLINE)  # it looked and found none: what comes next is new
        log.write_text(HELD.format(cluster=12))
        assert wakes.wait_for(1)
    finally:
        follower.shutdown()


def test_hearing_of_a_change_makes_the_tracker_cycle_again_soon_then_back_to_its_interval(tmp_path):
    from modaclouds_batch.store import Store

    store = Store(tmp_path / "g.db")
    try:
        tracker = Tracker(store, FakeCondor(), interval=2.0)
        assert tracker.next_wait() == 2.0
        tracker.heard_of_change()
        assert tracker._wake.is_set()
        assert tracker.next_wait() == MIN_GAP
        tracker._follow_up_until = 0.0  # the follow-up window has passed
        assert tracker.next_wait() == 2.0
    finally:
        store.close()
