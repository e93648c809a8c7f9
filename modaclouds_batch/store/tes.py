"""TES tasks beside their jobs (tes_tasks): the request no job column holds, and its output delivery.

A part of ``Store`` (store/__init__.py): its methods share the store's connections and transactions.
"""

from __future__ import annotations

import json
from typing import Any, Iterable





class TesQueries:
    def add_tes_task(self, job_id: str, name: str | None, tags: dict[str, str], task: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["tes_tasks"].insert({"job_id": job_id, "tes_name": name, "tags": json.dumps(tags),
                                    "task": json.dumps(task)})

    def tes_tasks(self, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored TES requests of these jobs, by job id (jobs that are no task are absent),
        each with ``_delivery``: what became of its outputs (None until delivered)."""
        job_ids = list(job_ids)
        found: dict[str, dict[str, Any]] = {}
        with self._reading() as db:
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start:start + 500]
                for row in db.query(
                        f"select job_id, task, delivery from tes_tasks where job_id in ({','.join('?' * len(chunk))})",
                        chunk):
                    found[row["job_id"]] = {**json.loads(row["task"]),
                                            "_delivery": json.loads(row["delivery"]) if row["delivery"] else None}
        return found

    def tes_tasks_awaiting_delivery(self, completed: str) -> list[str]:
        """The TES tasks with outputs whose job is ``completed`` and whose delivery is not
        recorded yet, oldest first."""
        with self._reading() as db:
            return [r[0] for r in db.execute(
                "select t.job_id from tes_tasks t join jobs j on j.id = t.job_id"
                " where t.delivery is null and json_extract(t.task, '$._outputs') is not null"
                " and j.state = ? order by j.completed_at, j.id",
                [completed])]

    def set_tes_delivery(self, job_id: str, delivery: dict[str, Any]) -> None:
        """Record what became of a task's outputs (nothing, if the task was deleted meanwhile)."""
        with self.transaction() as db:
            db.execute("update tes_tasks set delivery = ? where job_id = ?", [json.dumps(delivery), job_id])
