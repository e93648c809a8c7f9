"""The one job-state vocabulary (how HTCondor's job ads map onto it is jobs/ad_changes.py's).

API, store and docs all use these names; nothing else may invent a state.
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    IDLE = "idle"
    RUNNING = "running"
    SUSPENDED = "suspended"
    HELD = "held"
    COMPLETED = "completed"
    FAILED = "failed"
    REMOVED = "removed"
    SUBMISSION_ERROR = "submission_error"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.REMOVED, JobState.SUBMISSION_ERROR}
)
ACTIVE_STATES = frozenset(set(JobState) - FINAL_STATES)

DESCRIPTIONS = {
    JobState.IDLE: "queued, waiting for a free slot (or its input files are still being spooled)",
    JobState.RUNNING: "running on an execute node (or its input files are still on their way there, "
                      "or its outputs on their way back)",
    JobState.SUSPENDED: "paused on its execute node by a suspend action; continue resumes it",
    JobState.HELD: "held by a user action or by HTCondor (see state_reason); release requeues it",
    JobState.COMPLETED: "run.sh exited with status 0; outputs are ready",
    JobState.FAILED: "run.sh exited non-zero or was killed by a signal; outputs are ready",
    JobState.REMOVED: "removed before it finished: no output archive; stdout and stderr keep what it printed",
    JobState.SUBMISSION_ERROR: "HTCondor refused or lost the job; state_reason tells why",
}

# condor_q's name for a job it shows running (JobStatus.RUNNING) whose starter is still fetching
# its input files (condor_q's "<"): the shadow sets JobCurrentStartExecutingDate, and pushes
# it to the schedd at once, only when the job's own process starts. TransferringInput false
# (the transfer is over) wins over a stale date, e.g. if a reconnecting shadow moved
# JobCurrentStartDate past it.
TRANSFERRING_INPUT = "Transferring Input"


class JobAction(str, Enum):
    REMOVE = "remove"
    HOLD = "hold"
    RELEASE = "release"
    SUSPEND = "suspend"
    CONTINUE = "continue"


# Which states each action makes sense from; anything else is a conflict.
ACTION_ALLOWED_FROM = {
    JobAction.REMOVE: ACTIVE_STATES,
    JobAction.HOLD: frozenset({JobState.IDLE, JobState.RUNNING, JobState.SUSPENDED}),
    JobAction.RELEASE: frozenset({JobState.HELD}),
    JobAction.SUSPEND: frozenset({JobState.RUNNING}),
    JobAction.CONTINUE: frozenset({JobState.SUSPENDED}),
}


def action_conflict(action: JobAction, state: JobState) -> str | None:
    """Why ``action`` makes no sense for a job in ``state``; None when it does."""
    if state in ACTION_ALLOWED_FROM[action]:
        return None
    if state.is_final:
        return f"the job is already {state.value}; {action.value} applies only to jobs still in the queue"
    allowed = ", ".join(sorted(s.value for s in ACTION_ALLOWED_FROM[action]))
    return f"cannot {action.value} a job that is {state.value}; {action.value} applies to jobs that are {allowed}"
