"""Which state changes become notifications, and what a notification says.

Pure functions: the store calls ``events_for_change`` inside the transaction that records
the state, so a final state is never recorded without its notification.
"""

from __future__ import annotations

import uuid
from typing import Any, Mapping

from ..jobs.states import JobState
from ..timefmt import now_iso

ARTIFACT_NAMES = ("output", "stdout", "stderr")


def event_type(state: str) -> str:
    return f"job.{state}"


def payload_for(job: Mapping[str, Any], base_url: str, event_id: str, at: str) -> dict[str, Any]:
    """The JSON body receivers get. ``job-uuid`` and ``retcode`` keep the original contract."""
    base = f"{base_url}/jobs/{job['id']}"
    state = JobState(job["state"])
    outputs_ready = bool(job.get("outputs_retrieved_at"))
    return {
        "type": event_type(state.value),
        "event_id": event_id,
        "timestamp": at,
        "job-uuid": job["id"],
        "retcode": job.get("exit_status") if state.is_final else None,
        "job_id": job["id"],
        "backend_id": job.get("cluster_id"),
        "name": job.get("name"),
        "job_status": state.value,
        "final": state.is_final,
        "state_reason": job.get("state_reason"),
        "exit_status": job.get("exit_status"),
        "exit_by_signal": bool(job.get("exit_by_signal")) if job.get("exit_by_signal") is not None else None,
        "exit_signal": job.get("exit_signal"),
        "created_at": job.get("created_at"),
        "start_date": job.get("started_at"),
        "completion_date": job.get("completed_at"),
        "answer_id": job.get("answer_id"),
        "array_id": job.get("array_id"),
        "links": {
            "job": base,
            "artifacts": {name: f"{base}/artifacts/{name}" for name in ARTIFACT_NAMES} if outputs_ready else {},
        },
    }


def events_for_change(job: Mapping[str, Any], base_url: str) -> list[dict[str, Any]]:
    """Outbox rows for a job that just entered ``job['state']`` (the row as now stored)."""
    url = job.get("notification_url")
    if not url:
        return []
    final = JobState(job["state"]).is_final
    if not final and job.get("notification_events") != "all":
        return []
    event_id = f"msg_{uuid.uuid4().hex}"
    at = now_iso()
    return [{
        "id": event_id,
        "job_id": job["id"],
        "event_type": event_type(job["state"]),
        "url": url,
        "payload": payload_for(job, base_url, event_id, at),
        "created_at": at,
        "next_attempt_at": at,
    }]
