"""What a job ad means in our vocabulary (its state, backend status, reason) and what it changes
in our record of a job: a pure mapping, no I/O but the kept live output.

The tracker applies it every cycle; the job service after an action (``refresh``).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..condor import submit_description as sd
from ..condor.job_ad import JobAd, JobStatus
from ..store import JobChange
from ..timefmt import epoch_to_iso, now_iso
from . import live_output
from .states import TRANSFERRING_INPUT, JobState


def backend_status(ad: Mapping) -> str | None:
    """HTCondor's name for the job's status, as condor_q shows it (Transferring Input apart)."""
    ad = JobAd.of(ad)
    status = ad.status
    started = ad.get("JobCurrentStartDate")
    if status is JobStatus.RUNNING and started is not None and ad.get("TransferringInput") is not False:
        executing = ad.get("JobCurrentStartExecutingDate")
        if executing is None or executing < started:  # an older date is a previous run's
            return TRANSFERRING_INPUT
    return status.label if status is not None else None


# How each HTCondor JobStatus reads in our vocabulary (held and completed need a closer look).
STATE_OF_STATUS = {
    JobStatus.IDLE: JobState.IDLE,
    JobStatus.RUNNING: JobState.RUNNING,
    JobStatus.TRANSFERRING_OUTPUT: JobState.RUNNING,
    JobStatus.SUSPENDED: JobState.SUSPENDED,
    JobStatus.REMOVED: JobState.REMOVED,
}


def state_from_ad(ad: Mapping) -> JobState:
    """Map one job ad (JobStatus, HoldReasonCode, ExitCode, ExitBySignal) to a state."""
    ad = JobAd.of(ad)
    status = ad.status
    if status in STATE_OF_STATUS:
        return STATE_OF_STATUS[status]
    if status is JobStatus.HELD:
        # The schedd holds a spooled job until its input files arrive: not a hold of the user's.
        return JobState.IDLE if ad.spooling_input else JobState.HELD
    if status is JobStatus.COMPLETED:
        if ad.exit_by_signal or (ad.exit_code or 0) != 0:
            return JobState.FAILED
        return JobState.COMPLETED
    raise ValueError(f"unknown HTCondor JobStatus {ad.raw_status!r}")


def _detail_fields(ad: Mapping[str, Any]) -> dict[str, Any]:
    """The job-ad facts the detail view shows, named as the store names them."""
    fields = {
        "global_job_id": ad.get("GlobalJobId"),
        "backend_status": backend_status(ad),
        "started_at": epoch_to_iso(ad.get("JobStartDate")),
        "run_count": ad.get("NumJobStarts"),
        "priority": ad.get("JobPrio"),
        "universe": ad.get("JobUniverse"),
        "image_size_kb": ad.get("ImageSize"),
        "cpu_user_seconds": ad.get("RemoteUserCpu"),
        "cpu_system_seconds": ad.get("RemoteSysCpu"),
        "remote_host": ad.get("RemoteHost") or ad.get("LastRemoteHost"),
        "live_dir": live_output.live_dir_of(ad),
    }
    return {k: v for k, v in fields.items() if v is not None}


def _exit_fields(ad: Mapping[str, Any]) -> dict[str, Any]:
    ad = JobAd.of(ad)
    by_signal = ad.exit_by_signal
    return {
        "exit_by_signal": int(by_signal),
        "exit_status": None if by_signal else ad.exit_code,
        "exit_signal": ad.exit_signal if by_signal else None,
        "completed_at": epoch_to_iso(ad.get("CompletionDate")) or now_iso(),
    }


# HoldReasonCode values a user meets most; the rest are named by their code.
HOLD_CODES = {1: "held by a user action", 3: "held by the job's policy", 6: "the job could not start",
              12: "a file transfer failed", 13: "a file transfer failed", 26: "the job exceeded a resource limit"}


def state_reason(state: JobState, ad: Mapping[str, Any]) -> str | None:
    ad = JobAd.of(ad)
    if state is JobState.HELD:
        # The schedd sometimes records an empty reason (seen with user holds).
        code = ad.hold_reason_code
        return ad.hold_reason or HOLD_CODES.get(code, f"held (HoldReasonCode {code})")
    if state is JobState.REMOVED:
        return ad.get("RemoveReason")
    if state is JobState.FAILED:
        limit = ad.get(sd.GATEWAY_TIME_LIMIT)
        if limit and not ad.exit_by_signal and ad.exit_code == sd.TIME_LIMIT_EXIT_CODE \
                and float(ad.get("RemoteWallClockTime") or 0) >= float(limit):
            return f"exceeded its time limit of {limit} s: run.sh was stopped; its output so far is kept"
        if ad.exit_by_signal:
            return f"run.sh was killed by signal {ad.exit_signal}"
        return f"run.sh exited with status {ad.exit_code}"
    if state is JobState.COMPLETED:
        return "run.sh exited with status 0"
    return None


def requeue_reason(job: Mapping[str, Any], state: JobState, ad: Mapping[str, Any]) -> str | None:
    """Why a job that ran is idle again: HTCondor requeued it (its execute node was lost, or
    it was evicted) and will run it anew elsewhere; None for any other change."""
    if state is not JobState.IDLE or job["state"] not in (JobState.RUNNING.value, JobState.SUSPENDED.value):
        return None
    where = ad.get("LastRemoteHost") or job.get("remote_host") or "its execute node"
    why = ad.get("VacateReason") or ad.get("LastVacateReason")
    detail = f" ({why})" if why else ""
    return f"requeued: it stopped running on {where}{detail}; HTCondor runs it again from the start"


def changes_from_ads(job: Mapping[str, Any], ad: Mapping[str, Any], final_allowed: bool) -> JobChange | None:
    """What a job ad changes in our record of ``job``.

    ``final_allowed`` False keeps completed/failed out: those are recorded only after
    the outputs are back, so that 'completed' always means 'outputs are ready'.
    """
    ad = JobAd.of(ad)
    state = state_from_ad(ad)
    fields = _detail_fields(ad)
    change = JobChange(job["id"])
    if state in (JobState.COMPLETED, JobState.FAILED) and not final_allowed:
        state = JobState(job["state"])
    if state.is_final:
        fields.update(_exit_fields(ad) if state is not JobState.REMOVED else {"completed_at": now_iso()})
    if state.value != job["state"] or (
        state is JobState.HELD and state_reason(state, ad) != job.get("state_reason")
    ):
        change.new_state = state.value
        change.reason = state_reason(state, ad) or requeue_reason(job, state, ad)
    change.fields = {k: v for k, v in fields.items() if job.get(k) != v}
    if change.new_state is None and not change.fields:
        return None
    return change


def keep_output_of_removed(job: Mapping[str, Any], ad: Mapping[str, Any], change: JobChange) -> None:
    """A job seen removed keeps what it printed: its spool goes when it leaves the queue."""
    if change.new_state == JobState.REMOVED.value and job.get("job_dir"):
        live_output.keep(live_output.live_dir_of(ad), job["job_dir"])
