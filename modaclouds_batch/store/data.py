"""Data objects and which jobs use them (data_objects, job_data).

A part of ``Store`` (store/__init__.py): its methods share the store's connections and transactions.
"""

from __future__ import annotations

from typing import Any, Iterable

from .records import _decode_job


class DataQueries:
    def insert_data(self, row: dict[str, Any]) -> None:
        with self.transaction() as db:
            db["data_objects"].insert(row)

    def get_data(self, data_id: str) -> dict[str, Any] | None:
        with self._reading() as db:
            rows = list(db.query("select * from data_objects where id = ?", [data_id]))
        return rows[0] if rows else None

    def list_data(self, owner: str | None, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        where, params = ("where owner = ?", [owner]) if owner else ("", [])
        with self._reading() as db:
            total = db.execute(f"select count(*) from data_objects {where}", params).fetchone()[0]
            rows = list(db.query(
                f"select * from data_objects {where} order by created_at desc, id desc limit ? offset ?",
                [*params, limit, offset]))
        return rows, total

    def update_data(self, data_id: str, values: dict[str, Any], expected_sha256: str | None = None) -> bool:
        """Replace metadata; with ``expected_sha256``, only if the content did not change meanwhile."""
        with self.transaction() as db:
            if expected_sha256 is not None:
                current = db.execute("select sha256 from data_objects where id = ?", [data_id]).fetchone()
                if current is None or current[0] != expected_sha256:
                    return False
            db["data_objects"].update(data_id, values)
            return True

    def delete_data(self, data_id: str) -> None:
        with self.transaction() as db:
            db.execute("delete from data_objects where id = ?", [data_id])

    def jobs_using_data(self, data_id: str, states: Iterable[str]) -> list[str]:
        states = list(states)
        with self._reading() as db:
            return [r[0] for r in db.execute(
                "select distinct r.job_id from job_data_refs r join jobs j on j.id = r.job_id"
                f" where r.data_id = ? and j.state in ({','.join('?' * len(states))})",
                [data_id, *states])]

    def job_data_refs(self, job_id: str) -> dict[str, list[str]]:
        """The data objects a job uses, by role (bundle, input, binary, input_file, answer)."""
        refs: dict[str, list[str]] = {}
        with self._reading() as db:
            for data_id, role in db.execute(
                    "select data_id, role from job_data_refs where job_id = ? order by rowid", [job_id]):
                refs.setdefault(role, []).append(data_id)
        return refs

    def jobs_answering_into(self, states: Iterable[str]) -> list[dict[str, Any]]:
        """Jobs in these states whose answer goes into a given data object, oldest first."""
        states = list(states)
        with self._reading() as db:
            return [_decode_job(r) for r in db.query(
                "select * from jobs where answer_into is not null"
                f" and state in ({','.join('?' * len(states))}) order by created_at, id", states)]

    def expired_data(self, now: str) -> list[dict[str, Any]]:
        with self._reading() as db:
            return list(db.query(
                "select * from data_objects where expires_at is not null and expires_at <= ?", [now]))
