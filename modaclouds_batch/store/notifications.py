"""The webhook outbox and its delivery attempts, and the owners' signing secrets (outbox,
delivery_attempts, webhook_secrets).

A part of ``Store`` (store/__init__.py): its methods share the store's connections and transactions.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable, Iterable





class NotificationQueries:
    def due_notifications(self, now: str, limit: int, exclude: Iterable[str] = (), per_host: int | None = None,
                          busy_hosts: Iterable[str] = (), per_owner: int | None = None,
                          busy_owners: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Pending events due by ``now``, oldest first, each with its job's ``owner``.

        With ``per_host`` / ``per_owner``: at most that many per receiver host and per job
        owner, and none for ``busy_hosts`` / ``busy_owners`` (so one host's or one user's
        backlog cannot fill the page and hide everyone else's events).
        """
        exclude, busy_hosts, busy_owners = list(exclude), list(busy_hosts), list(busy_owners)
        skip = f" and o.id not in ({','.join('?' * len(exclude))})" if exclude else ""
        where, params = ["1"], []
        for column, most, busy in (("host", per_host, busy_hosts), ("owner", per_owner, busy_owners)):
            if most is not None:
                where.append(f"{column}_rank <= ?")
                params.append(most)
            if busy:
                where.append(f"{column} not in ({','.join('?' * len(busy))})")
                params.extend(busy)
        sql = ("select * from (select o.*, coalesce(j.owner, '') as owner, url_host(o.url) as host,"
               " row_number() over (partition by url_host(o.url) order by o.next_attempt_at) as host_rank,"
               " row_number() over (partition by coalesce(j.owner, '') order by o.next_attempt_at) as owner_rank"
               " from outbox o left join jobs j on j.id = o.job_id"
               f" where o.status = 'pending' and o.next_attempt_at <= ?{skip})"
               f" where {' and '.join(where)} order by next_attempt_at limit ?")
        with self._reading() as db:
            rows = [dict(r) for r in db.query(sql, [now, *exclude, *params, limit])]
        for row in rows:
            for key in ("host", "host_rank", "owner_rank"):
                row.pop(key, None)
        return rows

    def next_notification_due(self) -> str | None:
        with self._reading() as db:
            return db.execute(
                "select min(next_attempt_at) from outbox where status = 'pending'"
            ).fetchone()[0]

    def record_delivery_attempt(
        self, event_id: str, *, at: str, status_code: int | None, error: str | None,
        duration_ms: int, outcome: str, next_attempt_at: str | None = None, url: str | None = None,
        permanent_answers: int = 0, stopped_reason: str | None = None,
    ) -> None:
        """One attempt and its consequence (delivered, retry at a time, or failed) at once.

        The attempt is always logged; its consequence only applies while the event is still
        pending at ``url`` (the URL tried): an owner who cancelled or redirected it while the
        attempt ran has the last word.
        """
        with self.transaction() as db:
            row = db.execute("select status, url from outbox where id = ?", [event_id]).fetchone()
            if row is None:
                return  # its job was deleted while the attempt ran
            db["delivery_attempts"].insert({"event_id": event_id, "at": at, "status_code": status_code,
                                            "error": error, "duration_ms": duration_ms})
            db.execute("update outbox set attempts = attempts + 1 where id = ?", [event_id])
            if row[0] != "pending" or (url is not None and row[1] != url):
                return
            values: dict[str, Any] = {"status": outcome, "last_error": error, "permanent_answers": permanent_answers,
                                      "stopped_reason": stopped_reason}
            if outcome == "delivered":
                values["delivered_at"] = at
            if next_attempt_at:
                values["next_attempt_at"] = next_attempt_at
            db["outbox"].update(event_id, values)

    def job_notifications(self, job_id: str) -> list[dict[str, Any]]:
        with self._reading() as db:
            events = [dict(r) for r in db.query(
                "select * from outbox where job_id = ? order by created_at, id", [job_id])]
            for event in events:
                event["payload"] = json.loads(event["payload"])
                event["attempts_log"] = list(db.query(
                    "select at, status_code, error, duration_ms from delivery_attempts"
                    " where event_id = ? order by id", [event["id"]]))
            return events

    def notification_summary(self, job_id: str, recent: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """A job's notifications in brief: how many in each status, and the ``recent`` newest
        (oldest of them first), without their bodies or attempt logs."""
        with self._reading() as db:
            counts = {status: n for status, n in db.execute(
                "select status, count(*) from outbox where job_id = ? group by status", [job_id])}
            rows = [dict(r) for r in db.query(
                "select id, event_type, url, status, attempts, created_at, next_attempt_at, delivered_at,"
                " last_error, stopped_reason from outbox where job_id = ?"
                " order by created_at desc, id desc limit ?", [job_id, recent])]
        return counts, rows[::-1]

    def get_notification(self, job_id: str, event_id: str) -> dict[str, Any] | None:
        with self._reading() as db:
            rows = list(db.query("select * from outbox where id = ? and job_id = ?", [event_id, job_id]))
        return dict(rows[0]) if rows else None

    def requeue_notification(self, job_id: str, event_id: str, now: str) -> bool:
        """Send an event again (same id, so receivers still dedupe); False if unknown."""
        with self.transaction() as db:
            cursor = db.execute(
                "update outbox set status = 'pending', next_attempt_at = ?, last_error = null,"
                " permanent_answers = 0, stopped_reason = null"
                " where id = ? and job_id = ?", [now, event_id, job_id])
            return cursor.rowcount == 1

    def cancel_notification(self, job_id: str, event_id: str, reason: str) -> str | None:
        """Stop a pending event for good. Returns its status before (only 'pending' ones are
        cancelled), or None when the job has no such event."""
        with self.transaction() as db:
            row = db.execute("select status from outbox where id = ? and job_id = ?", [event_id, job_id]).fetchone()
            if row is None:
                return None
            if row[0] == "pending":
                db.execute("update outbox set status = 'cancelled', stopped_reason = ? where id = ?",
                           [reason, event_id])
            return row[0]

    def redirect_notification(self, job_id: str, event_id: str, url: str, now: str) -> str | None:
        """Point a pending (or stopped: failed) event at a new URL and make it due now; the job's
        later notifications follow when it was the job's URL. Returns the event's status
        before (delivered and cancelled ones are left alone), or None when it is unknown."""
        with self.transaction() as db:
            row = db.execute("select status, url from outbox where id = ? and job_id = ?",
                             [event_id, job_id]).fetchone()
            if row is None:
                return None
            if row[0] in ("pending", "failed"):
                db.execute(
                    "update outbox set url = ?, status = 'pending', next_attempt_at = ?, last_error = null,"
                    " permanent_answers = 0, stopped_reason = null where id = ?", [url, now, event_id])
                db.execute("update jobs set notification_url = ?, updated_at = ? where id = ? and notification_url = ?",
                           [url, now, job_id, row[1]])
            return row[0]

    def webhook_secrets(self, owner: str, now: str, make_secret: Callable[[], str]) -> list[dict[str, Any]]:
        """The owner's secrets that sign now: the current one first (made with ``make_secret``
        when the owner has none yet), then those rotated out whose overlap has not ended."""
        with self.transaction() as db:
            db.execute("delete from webhook_secrets where owner = ? and valid_until <= ?", [owner, now])
            if db.execute("select 1 from webhook_secrets where owner = ? and valid_until is null",
                          [owner]).fetchone() is None:
                db["webhook_secrets"].insert({"id": str(uuid.uuid4()), "owner": owner, "secret": make_secret(),
                                              "created_at": now, "valid_until": None})
            return [dict(r) for r in db.query(
                "select secret, created_at, valid_until from webhook_secrets where owner = ?"
                " order by valid_until is not null, valid_until desc, created_at desc", [owner])]

    def rotate_webhook_secret(self, owner: str, now: str, old_valid_until: str,
                              make_secret: Callable[[], str]) -> list[dict[str, Any]]:
        """Replace the owner's current secret with a new one; the old one signs until
        ``old_valid_until``. Returns the secrets that sign now, as ``webhook_secrets``."""
        with self.transaction() as db:
            db.execute("update webhook_secrets set valid_until = ? where owner = ? and valid_until is null",
                       [old_valid_until, owner])
            db["webhook_secrets"].insert({"id": str(uuid.uuid4()), "owner": owner, "secret": make_secret(),
                                          "created_at": now, "valid_until": None})
            return self.webhook_secrets(owner, now, make_secret)
