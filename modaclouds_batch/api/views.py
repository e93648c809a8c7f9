"""How jobs look on the wire: the list entry and the detailed view."""

from __future__ import annotations

from typing import Any, Mapping

from ..jobs.resources import DEFAULT_CPUS, DEFAULT_DISK_MB, DEFAULT_MEMORY_MB
from ..jobs.states import ACTION_ALLOWED_FROM, JobAction, JobState

UNIVERSES = {5: "vanilla", 7: "scheduler", 9: "grid", 10: "java", 11: "parallel", 12: "local", 13: "vm"}
ARTIFACTS = ("output", "stdout", "stderr")


def job_summary(job: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": job["id"],
        "job_status": job["state"],
        "name": job["name"],
        "created_at": job["created_at"],
        "backend_id": job["cluster_id"],
    }


def job_detail(job: Mapping[str, Any], events: list[dict[str, Any]],
               notifications: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``notifications``: the summary NotificationControl.summary gives (GET /jobs/{id} has it)."""
    base = f"/jobs/{job['id']}"
    state = JobState(job["state"])
    actions = [a.value for a in JobAction if state in ACTION_ALLOWED_FROM[a]]
    outputs_ready = bool(job.get("outputs_retrieved_at"))
    return {
        "id": job["id"],
        "job_id": job["id"],
        "backend_id": job["cluster_id"],
        "name": job["name"],
        "owner": job["owner"],
        "job_status": job["state"],
        "state_reason": job.get("state_reason"),
        "backend_job_status": job.get("backend_status"),
        "cluster_id": job["cluster_id"],
        "proc_id": job["proc_id"],
        "global_job_id": job.get("global_job_id"),
        "arguments": job["arguments"],
        "has_input": bool(job.get("has_input")),
        "exit_status": job.get("exit_status"),
        "exit_by_signal": job.get("exit_by_signal"),
        "exit_signal": job.get("exit_signal"),
        "created_at": job["created_at"],
        "updated_at": job["updated_at"],
        "start_date": job.get("started_at"),
        "completion_date": job.get("completed_at"),
        "run_count": job.get("run_count"),
        "priority": job.get("priority"),
        "universe": UNIVERSES.get(job.get("universe"), job.get("universe")),
        "image_size_kb": job.get("image_size_kb"),
        "cpu_usage": {
            "user_seconds": job.get("cpu_user_seconds"),
            "system_seconds": job.get("cpu_system_seconds"),
        },
        "remote_host": job.get("remote_host"),
        "notification_url": job.get("notification_url"),
        "notification_events": job.get("notification_events"),
        "outputs_ready": outputs_ready,
        "answer_id": job.get("answer_id"),
        "kind": job.get("kind") or "bundle",
        "command": job.get("command"),
        "array_id": job.get("array_id"),
        "ttl": job.get("ttl"),
        "runtime": job.get("runtime"),
        "resources": {"cpus": job.get("request_cpus") or DEFAULT_CPUS,
                      "memory_mb": job.get("request_memory_mb") or DEFAULT_MEMORY_MB,
                      "disk_mb": job.get("request_disk_mb") or DEFAULT_DISK_MB},
        "time_limit": job.get("time_limit"),
        "expires_at": job.get("expires_at"),
        "after": job.get("after", []),
        "after_any": job.get("after_any", []),
        "awaiting_dependencies": bool(job.get("awaiting_dependencies")) and not state.is_final,
        "history": events,
        **({"notifications": notifications_summary_view(job["id"], notifications)} if notifications else {}),
        "links": {
            "self": base,
            "events": f"{base}/events",
            "notifications": f"{base}/notifications",
            "artifacts": {name: f"{base}/artifacts/{name}" for name in ARTIFACTS} if outputs_ready else {},
            "answer": f"/data/{job['answer_id']}" if job.get("answer_id") else None,
            "actions": {name: f"{base}/{name}" for name in actions},
        },
    }


def notification_brief(event: Mapping[str, Any]) -> dict[str, Any]:
    """One notification's state, without its body and attempt log."""
    base = f"/jobs/{event['job_id']}/notifications/{event['id']}"
    pending = event["status"] == "pending"
    return {
        "event_id": event["id"],
        "type": event["event_type"],
        "url": event["url"],
        "status": event["status"],
        "attempts": event["attempts"],
        "created_at": event["created_at"],
        "next_attempt_at": event["next_attempt_at"] if pending else None,
        "delivered_at": event["delivered_at"],
        "last_error": event["last_error"],
        "stopped_reason": event.get("stopped_reason"),
        # What the owner can do now: cancel a pending one, redirect a pending or failed one.
        "links": {**({"cancel": f"{base}/cancel"} if pending else {}),
                  **({"redirect": base} if event["status"] in ("pending", "failed") else {})},
    }


def notification_view(event: Mapping[str, Any]) -> dict[str, Any]:
    return {**notification_brief(event), "payload": event["payload"], "attempts_log": event["attempts_log"]}


def notifications_summary_view(job_id: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "signed": summary["signed"],
        "total": summary["total"],
        "counts": summary["counts"],
        "recent": [notification_brief({**row, "job_id": job_id}) for row in summary["recent"]],
        "link": f"/jobs/{job_id}/notifications",
    }


def array_view(array: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": array["id"],
        "array_id": array["id"],
        "backend_id": array["cluster_id"],
        "name": array["name"],
        "owner": array["owner"],
        "count": array["count"],
        "created_at": array["created_at"],
        "counts": array["counts"],
        "job_ids": [item["id"] for item in array["items"]],
        "jobs": [{**job_summary(item), "proc_id": item["proc_id"]} for item in array["items"]],
        "links": {"self": f"/arrays/{array['id']}", "jobs": f"/jobs?array_id={array['id']}"},
    }


def data_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "data_id": row["id"],
        "owner": row["owner"],
        "filename": row["filename"],
        "content_type": row["content_type"],
        "size": row["size"],
        "sha256": row["sha256"],
        "etag": row["sha256"],
        "source_job_id": row.get("source_job_id"),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "expires_at": row.get("expires_at"),
        "links": {"self": f"/data/{row['id']}", "metadata": f"/data/{row['id']}/metadata"},
    }
