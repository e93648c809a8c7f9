"""What a job ad changes in our record of a job: a pure mapping, no I/O but the kept live output.

The tracker applies it every cycle; the job service after an action (``refresh``).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..condor import submit_description as sd
from ..store import JobChange
from ..timefmt import epoch_to_iso, now_iso
from . import live_output
from .states import JobState, backend_status, state_from_ad


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
    by_signal = bool(ad.get("ExitBySignal"))
    return {
        "exit_by_signal": int(by_signal),
        "exit_status": None if by_signal else ad.get("ExitCode"),
        "exit_signal": ad.get("ExitSignal") if by_signal else None,
        "completed_at": epoch_to_iso(ad.get("CompletionDate")) or now_iso(),
    }


# HoldReasonCode values a user meets most; the rest are named by their code.
HOLD_CODES = {1: "held by a user action", 3: "held by the job's policy", 6: "the job could not start",
              12: "a file transfer failed", 13: "a file transfer failed", 26: "the job exceeded a resource limit"}


def state_reason(state: JobState, ad: Mapping[str, Any]) -> str | None:
    if state is JobState.HELD:
        # The schedd sometimes records an empty reason (seen with user holds).
        code = ad.get("HoldReasonCode")
        return ad.get("HoldReason") or HOLD_CODES.get(code, f"held (HoldReasonCode {code})")
    if state is JobState.REMOVED:
        return ad.get("RemoveReason")
    if state is JobState.FAILED:
        limit = ad.get(sd.GATEWAY_TIME_LIMIT)
        if limit and not ad.get("ExitBySignal") and ad.get("ExitCode") == sd.TIME_LIMIT_EXIT_CODE \
                and float(ad.get("RemoteWallClockTime") or 0) >= float(limit):
            return f"exceeded its time limit of {limit} s: run.sh was stopped; its output so far is kept"
        if ad.get("ExitBySignal"):
            return f"run.sh was killed by signal {ad.get('ExitSignal')}"
        return f"run.sh exited with status {ad.get('ExitCode')}"
    if state is JobState.COMPLETED:
        return "run.sh exited with status 0"
    return None


def changes_from_ads(job: Mapping[str, Any], ad: Mapping[str, Any], final_allowed: bool) -> JobChange | None:
    """What a job ad changes in our record of ``job``.

    ``final_allowed`` False keeps completed/failed out: those are recorded only after
    the outputs are back, so that 'completed' always means 'outputs are ready'.
    """
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
        change.reason = state_reason(state, ad)
    change.fields = {k: v for k, v in fields.items() if job.get(k) != v}
    if change.new_state is None and not change.fields:
        return None
    return change


def keep_output_of_removed(job: Mapping[str, Any], ad: Mapping[str, Any], change: JobChange) -> None:
    """A job seen removed keeps what it printed: its spool goes when it leaves the queue."""
    if change.new_state == JobState.REMOVED.value and job.get("job_dir"):
        live_output.keep(live_output.live_dir_of(ad), job["job_dir"])
