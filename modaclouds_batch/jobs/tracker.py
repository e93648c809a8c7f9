"""The poll loop that keeps every job's state current from the schedd.

One cycle costs a fixed number of schedd round trips whatever the number of jobs:
one queue query for all of this gateway's jobs, then at most one retrieve and one
edit for all jobs that finished, one history query for all jobs that left the queue
unseen, and one remove for all orphans.

Most cycles read only what changed: the query asks for the jobs whose status changed
since the previous cycle's query (``EnteredCurrentStatus``, less CHANGE_MARGIN), plus the
few the tracker is watching (finished jobs not yet gone from the queue, retrievals to
retry, jobs missing from the queue). A full cycle, which reads every job's ad and also
finds orphans, jobs gone unseen and changed wait reasons, runs first, after any schedd
error, and every ``reconcile_interval`` seconds: the safety net for what the change
query cannot see (resource-usage figures, a schedd clock far off ours).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..condor import submit_description as sd
from ..condor.job_ad import CondorAction, JobStatus
from ..condor.schedd import CondorClient, CondorUnavailable
from ..data.service import DataService
from ..home import restrict_tree
from ..store import JobChange, Store
from ..timefmt import now_iso
from . import dependencies, live_output
from .ad_changes import changes_from_ads, keep_output_of_removed, state_from_ad
from .states import ACTIVE_STATES, FINAL_STATES, JobState
from .waiting import wait_reasons

log = logging.getLogger(__name__)

# A finished job whose outputs cannot be retrieved this many times is closed without them.
MAX_RETRIEVE_ATTEMPTS = 5
# Least seconds between two cycles, however often the tracker is woken.
MIN_GAP = 0.5
# Seconds the tracker keeps cycling every MIN_GAP after the schedd's event log told of a
# change: the event is written a moment before the queue shows it (the shadow logs a job's
# end, then the schedd records it), so the first cycle may still see the job as it was.
FOLLOW_UP_SECONDS = 2.0
# Seconds a change query reaches back before the previous query started: the schedd's
# clock (EnteredCurrentStatus) against ours, and a change recorded while that query ran.
CHANGE_MARGIN = 10
# Seconds between two expiry sweeps.
SWEEP_INTERVAL = 15.0
# A job missing from both queue and history this many cycles is recorded as lost.
MAX_MISSING_CYCLES = 3
# Seconds a job of ours with neither a row nor a submission intent is left alone before it is
# removed as an orphan (the default of the orphan_grace_seconds setting).
ORPHAN_GRACE_SECONDS = 120
# Seconds a job acted on is watched by id (a remove lands within a few cycles).
ACTED_WATCH_SECONDS = 30.0


@dataclass
class CycleReport:
    round_trips: int = 0
    jobs_tracked: int = 0
    # Job ads the queue query returned (and the cycle converted), and whether it read every job's.
    ads_read: int = 0
    full: bool = True
    changes: int = 0
    retrieved: int = 0
    orphans_removed: int = 0
    duration: float = 0.0
    # Jobs that reached a final state in this cycle.
    ended: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Tracker:
    """The poll loop, given only what it needs: the store, the condor client, the data service
    (answers into data objects), the in-flight view (jobs submit has not recorded yet), who
    hears of ended jobs, and the retention sweep with keyed-submission recovery (app.py wires them)."""

    def __init__(self, store: Store, condor: CondorClient, interval: float, *,
                 data: DataService | None = None,
                 in_flight: Callable[[], set[str]] = set,
                 jobs_ended: Callable[[list[str]], None] = lambda job_ids: None,
                 sweep: Callable[[], dict[str, int]] | None = None,
                 recover_unsettled: Callable[[], None] | None = None,
                 on_cycle: Callable[[CycleReport], None] | None = None,
                 workers: Callable[[], list[dict[str, Any]]] | None = None,
                 orphan_grace: float = ORPHAN_GRACE_SECONDS, clock: Callable[[], float] = time.monotonic,
                 reconcile_interval: float = 0.0, wall_clock: Callable[[], float] = time.time):
        # Seconds between two full cycles; 0: every cycle is one (the change query never runs).
        self.reconcile_interval = reconcile_interval
        self._wall_clock = wall_clock
        self._last_full = float("-inf")
        self._needs_full = True
        # Epoch second (our clock, less CHANGE_MARGIN) from which the next change query reads.
        self._changes_since: int | None = None
        # Finished jobs whose outputs could not be retrieved yet: each cycle looks at them again.
        self._retrying: set[str] = set()
        # An unknown job is removed only once seen unknown for this long (by ``clock``).
        self.orphan_grace = orphan_grace
        self._clock = clock
        self._unknown_since: dict[str, float] = {}
        # Queued jobs of ours with no row, as the last cycle saw them: change cycles watch them.
        self._unknown: set[str] = set()
        # The pool's workers (one cached collector query), to say why idle jobs wait.
        self.workers = workers
        # Retention (after JobSubmission.recover_unsettled); None: no sweeps (unit tests).
        self.sweep = sweep
        self.recover_unsettled = recover_unsettled
        self._last_sweep = float("-inf")
        self.store = store
        self.condor = condor
        self.data = data
        self.in_flight = in_flight
        self.jobs_ended = jobs_ended
        self.interval = interval
        self.on_cycle = on_cycle
        # Jobs acted on (hold, remove...) lately, by when to stop watching them: change cycles
        # ask for them by id, so that one that left the queue unseen is closed at once.
        self._acted: dict[str, float] = {}
        self._acted_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._follow_up_until = float("-inf")
        self._thread: threading.Thread | None = None
        self._missing_cycles: dict[str, int] = {}
        # The first cycle tells the service's end listeners even if no job ended, so that
        # they catch up on what a stopped gateway left undone.
        self._told_listeners = False

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tracker", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def watch(self, job_ids: list[str]) -> None:
        """Have the next cycles look at these jobs by id for ACTED_WATCH_SECONDS, and soon."""
        until = self._clock() + ACTED_WATCH_SECONDS
        with self._acted_lock:
            self._acted.update((job_id, until) for job_id in job_ids)
        self.wake()

    def _watched_acted(self) -> set[str]:
        now = self._clock()
        with self._acted_lock:
            self._acted = {job_id: until for job_id, until in self._acted.items() if until > now}
            return set(self._acted)

    def wake(self) -> None:
        """Run the next cycle now (after a submission or an action)."""
        self._wake.set()

    def heard_of_change(self) -> None:
        """The schedd's event log says a job moved: cycle now, and again every MIN_GAP for
        FOLLOW_UP_SECONDS, until the queue shows what the event announced."""
        self._follow_up_until = time.monotonic() + FOLLOW_UP_SECONDS
        self._wake.set()

    def next_wait(self) -> float:
        """Seconds the loop waits for a wake-up before its next cycle."""
        return MIN_GAP if time.monotonic() < self._follow_up_until else self.interval

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                report = self.run_cycle()
                if self.on_cycle:
                    self.on_cycle(report)
            except Exception:  # the loop must survive anything; the cause is logged
                log.exception("tracker cycle failed")
            self._wake.wait(self.next_wait())
            self._wake.clear()
            # Wakes (one per submission) are coalesced: at most one cycle per MIN_GAP.
            rest = MIN_GAP - (time.monotonic() - started)
            if rest > 0:
                self._stop.wait(rest)

    # --- one cycle -------------------------------------------------------------------

    def run_cycle(self) -> CycleReport:
        started = time.perf_counter()
        report = self._cycle()
        report.duration = time.perf_counter() - started
        if report.ended or not self._told_listeners:  # the first even if the schedd is down: owed work is the store's
            self._told_listeners = True
            self.jobs_ended(report.ended)
        return report

    def _apply(self, changes: list[JobChange], report: CycleReport, **kw) -> None:
        """Store changes, noting in ``report`` the jobs they finish."""
        self.store.apply_job_changes(changes, **kw)
        report.ended += [c.job_id for c in changes if c.new_state and JobState(c.new_state).is_final]

    def _full_cycle_due(self) -> bool:
        return (self._needs_full or self.reconcile_interval <= 0 or self._changes_since is None
                or self._clock() - self._last_full >= self.reconcile_interval)

    def _cycle(self) -> CycleReport:
        report = CycleReport()
        start_trips = self.condor.thread_round_trips()
        instance = self.store.instance_id
        full = report.full = self._full_cycle_due()
        leaving = self.store.not_left_queue(s.value for s in FINAL_STATES)
        watched = set(leaving) | self._retrying | set(self._missing_cycles) | self._unknown | self._watched_acted()
        query_started = int(self._wall_clock()) - CHANGE_MARGIN
        try:
            constraint = (sd.instance_constraint(instance) if full
                          else sd.changed_since_constraint(instance, self._changes_since, sorted(watched)))
            ads = self.condor.query(constraint, sd.JOB_PROJECTION)
        except CondorUnavailable as exc:
            report.errors.append(str(exc))
            log.warning("tracker: schedd query failed, will retry: %s", exc)
            self._needs_full = True  # changes may have been missed meanwhile
            return report
        self._changes_since = query_started
        if full:
            self._needs_full, self._last_full = False, self._clock()
        report.ads_read = len(ads)
        active_states = {s.value for s in ACTIVE_STATES}
        if full:
            active = {job["id"]: job for job in self.store.active_jobs(active_states)}
        else:
            # Only the rows of the jobs the query returned or the tracker watches.
            rows = self.store.jobs_by_id({ad[sd.GATEWAY_JOB_ID] for ad in ads if ad.get(sd.GATEWAY_JOB_ID)} | watched)
            active = {job_id: job for job_id, job in rows.items() if job["state"] in active_states}
        report.jobs_tracked = len(active)

        changes: list[JobChange] = []
        finished: dict[str, tuple[dict, dict]] = {}
        leftovers: list[str] = []  # final in our store, still in the queue
        stale_gates: list[str] = []  # final in our store, still waiting in the queue
        unknown: list[str] = []
        in_flight = self.in_flight()
        seen: set[str] = set()
        for ad in ads:
            job_id = ad.gateway_job_id
            if not job_id:
                continue
            seen.add(job_id)
            job = active.get(job_id)
            if job is None:
                if job_id in in_flight:
                    continue
                if self.store.get_job(job_id) is None:
                    if ad.status is not JobStatus.REMOVED:  # already on its way out
                        unknown.append(job_id)
                elif ad.status is JobStatus.COMPLETED:
                    leftovers.append(job_id)
                elif ad.gated and ad.status in (JobStatus.IDLE, JobStatus.HELD):
                    stale_gates.append(job_id)
                continue
            if state_from_ad(ad) in (JobState.COMPLETED, JobState.FAILED):
                finished[job_id] = (job, ad)
            change = changes_from_ads(job, ad, final_allowed=False)
            if change:
                keep_output_of_removed(job, ad, change)
                changes.append(change)

        if changes:
            self._apply(changes, report)
            report.changes += len(changes)
        # Jobs that ended this cycle are recorded before their dependants are decided.
        if finished:
            self._collect_outputs(instance, finished, report)
        if leftovers:
            self._let_leave_queue(instance, leftovers, report)
        # A change query returns only what changed: absence means something only for the watched.
        missing = [job for job_id, job in active.items() if job_id not in seen and job_id not in in_flight
                   and (full or job_id in watched)]
        if missing:
            self._close_missing(instance, missing, report)
        self._note_left_queue(seen, report, among=None if full else set(leaving))
        restated = {c.job_id for c in changes if c.new_state}
        ended = {c.job_id for c in changes if c.new_state and JobState(c.new_state).is_final}
        decided: set[str] = set()
        # A waiting job that just ended (its owner removed it) has nothing left to wait for. A
        # change cycle settles those it read, and all of them (from their rows) when a job ended.
        if not full and report.ended:
            waiting = [job for job in self.store.active_jobs(active_states)
                       if job.get("awaiting_dependencies") and job["id"] not in ended]
            for job in waiting:
                active.setdefault(job["id"], job)
        else:
            waiting = [job for job_id, job in active.items()
                       if job.get("awaiting_dependencies") and job_id in seen and job_id not in ended]
        if waiting or stale_gates:
            now_in = {c.job_id: c.new_state for c in changes if c.new_state}
            decided = self._settle_dependencies(instance, waiting, now_in, stale_gates, report)
        idle = [(ad, active[ad.gateway_job_id].get("runtime")) for ad in ads
                if ad.gateway_job_id in active and state_from_ad(ad) is JobState.IDLE
                and ad.gateway_job_id not in decided]
        if idle and self.workers is not None:
            self._explain_waits(idle, active, restated, report)
        self._unknown = set(unknown)
        orphans = self._orphans(unknown)
        if orphans:
            self._remove_orphans(instance, orphans, report)
        if self.sweep is not None:
            self._sweep(report)
        report.round_trips = self.condor.thread_round_trips() - start_trips
        return report

    def _settle_dependencies(self, instance: str, waiting: list[dict], now_in: dict[str, str],
                             stale_gates: list[str], report: CycleReport) -> set[str]:
        """Open the gate of each waiting job whose dependencies all ended as it asked (one
        edit for all), remove those that can never start (one remove for all), and say what
        the others wait for. Returns the ids whose state_reason this decided: those still
        waiting, and those ended (still idle in the queue until the remove lands).

        The gate is opened in the schedd before the store says so, and a job is recorded
        removed before it is removed from the schedd: a gateway that stops in between finds
        the job still waiting (and opens it again) or a final job still gated in the queue
        (``stale_gates``, removed again), so neither step is lost."""
        edges = self.store.dependencies_of(job["id"] for job in waiting)
        targets = self.store.dependency_targets(after_id for pairs in edges.values() for after_id, _ in pairs)
        starting: list[dict] = []
        ending: list[JobChange] = []
        reasons: list[JobChange] = []
        still: set[str] = set()
        for job in waiting:
            outcome = dependencies.verdict(edges.get(job["id"], []), targets)
            if outcome.decision == "start":
                starting.append(job)
            elif outcome.decision == "end":
                ending.append(JobChange(job["id"], {"completed_at": now_iso(), "awaiting_dependencies": None},
                                        JobState.REMOVED.value, outcome.reason))
            else:
                still.add(job["id"])
                # Held by its owner meanwhile, it shows the hold's reason; idle again, what it waits for.
                if now_in.get(job["id"], job["state"]) == JobState.IDLE.value and (
                        job["id"] in now_in or job.get("state_reason") != outcome.reason):
                    reasons.append(JobChange(job["id"], {"state_reason": outcome.reason}))
        if starting:
            try:
                self.condor.edit(sd.jobs_constraint(instance, [job["id"] for job in starting]),
                                 sd.GATEWAY_WAITING, False)
            except CondorUnavailable as exc:
                report.errors.append(str(exc))
                log.warning("tracker: could not start %d jobs whose dependencies completed: %s", len(starting), exc)
                still.update(job["id"] for job in starting)
            else:
                # What it waits for now is a slot: the wait explanation says so below.
                reasons += [JobChange(job["id"], {"awaiting_dependencies": None, **(
                    {"state_reason": None} if now_in.get(job["id"], job["state"]) == JobState.IDLE.value else {})})
                    for job in starting]
        if reasons or ending:
            self._apply(reasons + ending, report)
            report.changes += len(reasons) + len(ending)
        doomed = [change.job_id for change in ending] + stale_gates
        if doomed:
            try:
                self.condor.act(CondorAction.REMOVE, sd.jobs_constraint(instance, doomed),
                                "a job it waited for ended without completing")
            except CondorUnavailable as exc:
                report.errors.append(str(exc))
                log.warning("tracker: could not remove %d jobs whose dependencies failed: %s", len(doomed), exc)
        return still | {change.job_id for change in ending}

    def _explain_waits(self, idle, active: dict[str, dict], restated: set[str], report: CycleReport) -> None:
        """Record why each idle job waits (state_reason), where that changed."""
        try:
            workers = self.workers()
        except Exception as exc:  # the collector is down: the reasons wait for the next cycle
            log.warning("tracker: could not read the workers to explain waiting jobs: %s", exc)
            return
        updates = [JobChange(job_id, {"state_reason": reason})
                   for job_id, reason in wait_reasons(idle, workers).items()
                   if job_id in restated or active[job_id].get("state_reason") != reason]
        if updates:
            self.store.apply_job_changes(updates)
            report.changes += len(updates)

    def _collect_outputs(self, instance: str, finished: dict[str, tuple[dict, dict]], report: CycleReport) -> None:
        """Retrieve all finished jobs' outputs in one call, then record their final states."""
        constraint = sd.jobs_constraint(instance, finished, status=JobStatus.COMPLETED)
        changes: list[JobChange] = []
        try:
            self.condor.retrieve(constraint)
        except CondorUnavailable as exc:
            report.errors.append(str(exc))
            log.warning("tracker: retrieving outputs of %d jobs failed: %s", len(finished), exc)
            for job, ad in finished.values():
                attempts = (job.get("retrieve_attempts") or 0) + 1
                if attempts < MAX_RETRIEVE_ATTEMPTS:
                    changes.append(JobChange(job["id"], {"retrieve_attempts": attempts}))
                    self._retrying.add(job["id"])
                else:
                    self._retrying.discard(job["id"])
                    change = changes_from_ads(job, ad, final_allowed=True)
                    change.reason = f"{change.reason}; outputs could not be retrieved: {exc}"
                    change.fields["retrieve_attempts"] = attempts
                    changes.append(change)
            self._apply(changes, report)
            return
        retrieved_at = now_iso()
        self._retrying.difference_update(finished)
        answers = []
        for job, _ in finished.values():
            restrict_tree(Path(job["job_dir"]))  # HTCondor wrote the outputs under the umask
        for job, ad in finished.values():
            live_output.keep(live_output.live_dir_of(ad), job["job_dir"])
            change = changes_from_ads(job, ad, final_allowed=True)
            change.fields["outputs_retrieved_at"] = retrieved_at
            answer_id, new_object = self._register_answer(job)
            if new_object:
                answers.append(new_object)
            if answer_id:
                change.fields["answer_id"] = answer_id
            changes.append(change)
        self._apply(changes, report, data_objects=answers)
        report.retrieved += len(changes)
        report.changes += len(changes)
        self._let_leave_queue(instance, list(finished), report)

    def _register_answer(self, job: dict) -> tuple[str | None, dict | None]:
        """The job's answer as a data object: its output archive (stdout for command jobs).

        Returns the answer's id and, when it is a new object, its row to store; a job with
        ``answer_into`` writes into that existing object instead (seed 003's data2_id)."""
        name, content_type = (sd.STDOUT_FILE, "text/plain") if job.get("kind") == "command" else (
            sd.OUTPUT_FILE, "application/gzip")
        path = Path(job["job_dir"]) / name
        if not path.is_file():
            return None, None
        if job.get("answer_into"):
            try:
                if self.data.fill_answer(job["answer_into"], path, content_type):
                    return job["answer_into"], None
                log.warning("job %s: its answer object %s is gone; its answer gets a new one",
                            job["id"], job["answer_into"])
            except OSError as exc:
                log.warning("could not write the answer of job %s into %s: %s", job["id"], job["answer_into"], exc)
        try:
            row = self.data.register_file(
                job["owner"], path, f"{job['id']}-{name}", content_type, source_job_id=job["id"],
                job_expires_at=job.get("expires_at"))
        except OSError as exc:
            log.warning("could not register the answer of job %s: %s", job["id"], exc)
            return None, None
        return row["id"], row

    def _let_leave_queue(self, instance: str, job_ids: list[str], report: CycleReport) -> None:
        """Spooled jobs wait in the queue for their outputs to be fetched; let them go."""
        try:
            self.condor.edit(sd.jobs_constraint(instance, job_ids, status=JobStatus.COMPLETED), "LeaveJobInQueue", False)
        except CondorUnavailable as exc:
            report.errors.append(str(exc))
            log.warning("tracker: could not release %d finished jobs from the queue: %s", len(job_ids), exc)

    def _close_missing(self, instance: str, missing: list[dict], report: CycleReport) -> None:
        """Jobs that left the queue between two cycles: read their end from the history."""
        try:
            ads = self.condor.history(sd.jobs_constraint(instance, [j["id"] for j in missing]), sd.JOB_PROJECTION, match=len(missing))
        except CondorUnavailable as exc:
            report.errors.append(str(exc))
            log.warning("tracker: history query failed: %s", exc)
            return
        by_id = {ad.gateway_job_id: ad for ad in ads}
        changes: list[JobChange] = []
        for job in missing:
            ad = by_id.get(job["id"])
            if ad is not None:
                self._missing_cycles.pop(job["id"], None)
                change = changes_from_ads(job, ad, final_allowed=True)
                if change and state_from_ad(ad) is not JobState.REMOVED:
                    change.reason = f"{change.reason}; the job left the queue before its outputs were retrieved"
                if change:
                    changes.append(change)
                continue
            cycles = self._missing_cycles.get(job["id"], 0) + 1
            self._missing_cycles[job["id"]] = cycles
            if cycles >= MAX_MISSING_CYCLES:
                self._missing_cycles.pop(job["id"], None)
                changes.append(JobChange(
                    job["id"], {"completed_at": now_iso()}, JobState.SUBMISSION_ERROR.value,
                    "HTCondor lost the job: it is in neither the schedd's queue nor its history; submit it again",
                ))
        if changes:
            self._apply(changes, report)
            report.changes += len(changes)

    def _note_left_queue(self, seen: set[str], report: CycleReport, among: set[str] | None = None) -> None:
        """Finished jobs the queue no longer holds: a removed job stays there until its worker stopped it.

        A change cycle knows only of those ``among`` the jobs its query watched."""
        gone = [job_id for job_id in self.store.not_left_queue(s.value for s in FINAL_STATES)
                if job_id not in seen and (among is None or job_id in among)]
        if gone:
            at = now_iso()
            self.store.apply_job_changes([JobChange(job_id, {"left_queue_at": at}) for job_id in gone])
            report.changes += len(gone)

    def _sweep(self, report: CycleReport) -> None:
        """Expiry at most once a minute: it needs no schedd call unless a ttl passed."""
        if time.monotonic() - self._last_sweep < SWEEP_INTERVAL:
            return
        self._last_sweep = time.monotonic()
        try:
            if self.recover_unsettled is not None:
                self.recover_unsettled()
            swept = self.sweep()
            report.changes += swept["removed"] + swept["cleaned"]
        except Exception:  # expiry must never stop tracking; the cause is logged
            log.exception("expiry sweep failed")

    def _orphans(self, unknown: list[str]) -> list[str]:
        """Of the queued jobs with no row, those to remove now: no submission intent either
        (another process on this database may be spooling them), unknown for the grace period."""
        intended = self.store.intended(unknown) if unknown else set()
        now = self._clock()
        since = {job_id: self._unknown_since.get(job_id, now) for job_id in unknown if job_id not in intended}
        self._unknown_since = since
        return [job_id for job_id, first in since.items() if now - first >= self.orphan_grace]

    def _remove_orphans(self, instance: str, job_ids: list[str], report: CycleReport) -> None:
        """Jobs this gateway queued but never recorded (it stopped mid-submission)."""
        try:
            self.condor.act(CondorAction.REMOVE, sd.jobs_constraint(instance, job_ids),
                            "the gateway has no record of this job")
            report.orphans_removed += len(job_ids)
            log.info("tracker: removed %d orphaned jobs", len(job_ids))
        except CondorUnavailable as exc:
            report.errors.append(str(exc))
            log.warning("tracker: could not remove orphaned jobs: %s", exc)
