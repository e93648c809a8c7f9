"""The gateway's durable state in SQLite (sqlite-utils, WAL mode).

Nothing else in the package writes SQL. Every query that matters has a name here.
One connection is shared by waitress' threads, the tracker and the webhook worker,
serialised by a lock: SQLite serialises writers anyway, and reads are short.

The store is a package by feature: each module owns its tables' named queries as a part
of ``Store`` (jobs.py, data.py, notifications.py, access.py, workers.py, idempotency.py,
tes.py); the schema is migrations.py, the records callers pass in are records.py.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlite_utils import Database

from .access import AccessQueries
from .data import DataQueries
from .idempotency import IdempotencyQueries
from .jobs import JobQueries
from .migrations import JOB_TALLY_TRIGGERS
from .migrations import migrations as _migrations
from .notifications import NotificationQueries
from .records import (SUMMARY_COLUMNS, TES_CONDITIONS, JobChange, JobFilter, KeyedSubmission, StateChangeHook,
                      decode_cursor, encode_cursor, url_host, _make_private)
from .tes import TesQueries
from .workers import WorkerQueries

__all__ = ["Store", "JobChange", "JobFilter", "KeyedSubmission", "StateChangeHook", "SUMMARY_COLUMNS",
           "TES_CONDITIONS", "JOB_TALLY_TRIGGERS", "url_host", "encode_cursor", "decode_cursor"]


class Store(JobQueries, IdempotencyQueries, NotificationQueries, AccessQueries, DataQueries, WorkerQueries,
            TesQueries):
    """One SQLite database, its connection and lock; the features' queries are its parts."""

    def __init__(self, path: Path | str, on_state_change: StateChangeHook | None = None):
        self.path = Path(path)
        self.on_state_change = on_state_change
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _make_private(self.path)
        conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self.db = Database(conn)
        self.db.enable_wal()
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self._lock = threading.RLock()
        self.db.register_function(url_host, name="url_host", deterministic=True)
        with self._lock:
            _migrations.apply(self.db)
            self.instance_id = self._ensure_instance_id()
            # What the tracker and sweeps read: every column but the user's words, which can be
            # large and which none of them needs.
            self._tracking_columns = ", ".join(
                c for c in self.db["jobs"].columns_dict if c not in ("arguments", "command"))

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """One atomic unit of work; nested uses join the outer one."""
        with self._lock:
            with self.db.atomic():
                yield self.db

    @contextmanager
    def durable_transaction(self) -> Iterator[Database]:
        """A transaction that survives an OS crash once it returns (synchronous = FULL).

        Elsewhere NORMAL is enough: WAL mode keeps the database consistent, and at worst an
        OS crash forgets the last commits. Not these: a forgotten job row would make the
        tracker take an acknowledged job for an orphan.
        """
        with self._lock:
            outermost = not self.db.conn.in_transaction
            if outermost:
                self.db.execute("PRAGMA synchronous = FULL")
            try:
                with self.db.atomic():
                    yield self.db
            finally:
                if outermost:
                    self.db.execute("PRAGMA synchronous = NORMAL")

    def _insert_rows(self, table: str, rows: Iterable[dict[str, Any]], verb: str = "insert") -> None:
        """Plain INSERTs (``verb``: "insert", "insert or ignore", "insert or replace"), one
        executemany per set of columns: the columns are the rows' own keys, so none of
        sqlite-utils' table introspection (three to five selects of sqlite_master and a
        savepoint per insert_all) on the submission path. Lists and dicts go in as JSON, as
        sqlite-utils stores them."""
        groups: dict[tuple[str, ...], list[list[Any]]] = {}
        for row in rows:
            groups.setdefault(tuple(row), []).append(
                [json.dumps(v) if isinstance(v, (dict, list, tuple)) else v for v in row.values()])
        for columns, values in groups.items():
            names = ", ".join(f'"{column}"' for column in columns)
            self.db.conn.executemany(f'{verb} into "{table}" ({names}) values ({", ".join("?" * len(columns))})',
                                     values)

    def _ensure_instance_id(self) -> str:
        """A stable id for this gateway, stored in every job ad it submits."""
        rows = list(self.db.query("select value from meta where key = 'instance_id'"))
        if rows:
            return rows[0]["value"]
        value = str(uuid.uuid4())
        self.db["meta"].insert({"key": "instance_id", "value": value})
        return value
