"""The gateway's durable state in SQLite (sqlite-utils, WAL mode).

Nothing else in the package writes SQL. Every query that matters has a name here.
Writes share one connection, serialised by a lock: SQLite serialises writers anyway.
Reads outside a transaction go to the reading thread's own connection: WAL lets readers
run beside the writer, so a request's reads never wait for another's durable commit
(the fsync of synchronous = FULL) or for a tracker transaction (issue 20's profile: with
four submitting clients, 39% of request time was spent waiting for the one connection).

The store is a package by feature: each module owns its tables' named queries as a part
of ``Store`` (jobs.py, data.py, notifications.py, access.py, workers.py, idempotency.py,
tes.py); the schema is migrations.py, the records callers pass in are records.py.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

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

T = TypeVar("T")

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
        # Per thread: how deep in a transaction it is, and its reading connection.
        self._here = threading.local()
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._readers_lock = threading.Lock()  # not the writer's: a new reader must not wait for a write
        self._tracer: Callable[[str], None] | None = None
        self._closed = False
        # Durable works waiting for the next group commit (``durably``).
        self._queue_lock = threading.Lock()
        self._queued: list[_Ticket] = []
        with self._lock:
            _migrations.apply(self.db)
            self.instance_id = self._ensure_instance_id()
            # What the tracker and sweeps read: every column but the user's words, which can be
            # large and which none of them needs.
            self._tracking_columns = ", ".join(
                c for c in self.db["jobs"].columns_dict if c not in ("arguments", "command"))

    def close(self) -> None:
        with self._lock, self._readers_lock:
            self._closed = True
            for reader in list(self._readers):
                reader.close()
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """One atomic unit of work; nested uses join the outer one."""
        with self._writing():
            with self.db.atomic():
                yield self.db

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The writer's lock, and this thread marked as in a transaction (its reads then see
        what it wrote so far)."""
        with self._lock:
            self._here.writing = getattr(self._here, "writing", 0) + 1
            try:
                yield
            finally:
                self._here.writing -= 1

    @contextmanager
    def _reading(self) -> Iterator[Database]:
        """Where a read goes: inside this thread's transaction, the writer (to see the
        transaction's own rows); otherwise this thread's reading connection, with one
        snapshot for the whole block (a page and its total agree)."""
        if getattr(self._here, "writing", 0):
            with self._lock:
                yield self.db
            return
        reader = getattr(self._here, "reader", None)
        if reader is None:
            with self._readers_lock:
                if self._closed:
                    raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
                reader = self._here.reader = _Reader(self.path, self._tracer)
                self._readers.add(reader)
        with reader.snapshot() as db:
            yield db

    @contextmanager
    def tracing(self, callback: Callable[[str], None]) -> Iterator[None]:
        """Every statement any of the store's connections runs goes to ``callback`` (what
        the cost tests count)."""
        with self._lock, self._readers_lock:
            self._tracer = callback
            for conn in [self.db.conn, *(r.conn for r in list(self._readers))]:
                conn.set_trace_callback(callback)
        try:
            yield
        finally:
            with self._lock, self._readers_lock:
                self._tracer = None
                for conn in [self.db.conn, *(r.conn for r in list(self._readers))]:
                    conn.set_trace_callback(None)

    def durably(self, work: Callable[[Database], T]) -> T:
        """Run ``work`` in a transaction that survives an OS crash once this returns
        (synchronous = FULL); its result, or what it raised (its writes then undone).

        Elsewhere NORMAL is enough: WAL mode keeps the database consistent, and at worst an
        OS crash forgets the last commits. Not these: a forgotten job row would make the
        tracker take an acknowledged job for an orphan.

        Group commit: the works of threads that queue while one commit waits for the disk go
        into the next transaction together, each in a savepoint of its own, and one fsync
        makes them all durable (with four submitting clients, every submission's two durable
        commits had each waited for the others'). Inside a caller's transaction, ``work``
        joins it.
        """
        if getattr(self._here, "writing", 0):
            with self._writing(), self.db.atomic():
                return work(self.db)
        ticket = _Ticket(work)
        with self._queue_lock:
            self._queued.append(ticket)
        with self._writing():
            if not ticket.done:
                self._commit_queued()
        return ticket.outcome()

    def _commit_queued(self) -> None:
        """Under the writer's lock: every queued work, in one durable commit."""
        with self._queue_lock:
            batch, self._queued = self._queued, []
        self.db.execute("PRAGMA synchronous = FULL")
        try:
            pending = batch
            while pending:
                pending = self._commit_batch(pending)
        finally:
            self.db.execute("PRAGMA synchronous = NORMAL")
            for ticket in batch:
                ticket.done = True

    def _commit_batch(self, batch: list[_Ticket]) -> list[_Ticket]:
        """One transaction of ``batch``'s works; returns those to run again (a work's failure
        took the whole transaction with it, theirs included)."""
        alone = len(batch) == 1  # its failure is the transaction's: no savepoint needed
        self.db.execute("BEGIN")
        try:
            for i, ticket in enumerate(batch):
                if not alone:
                    self.db.execute("SAVEPOINT durable_work")
                try:
                    ticket.result = ticket.work(self.db)
                except Exception as exc:
                    ticket.error = exc
                    if alone or not self.db.conn.in_transaction:
                        self.db.rollback()
                        return [t for t in batch if t.error is None]
                    self.db.execute("ROLLBACK TO durable_work")
                if not alone:
                    self.db.execute("RELEASE durable_work")
            self.db.execute("COMMIT")
        except BaseException as exc:  # a statement of ours, or the commit, failed: nothing was written
            self.db.rollback()
            for ticket in batch:
                ticket.error = ticket.error or exc
            if not isinstance(exc, Exception):
                raise
        return []

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


class _Reader:
    """One thread's reading connection: read-only, autocommit, a snapshot per ``snapshot``."""

    def __init__(self, path: Path, tracer: Callable[[str], None] | None):
        # isolation_level None: Python's sqlite3 opens no transaction of its own; ``snapshot``
        # opens and ends the read transaction itself.
        self.conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
        self.conn.execute("PRAGMA query_only = ON")
        self.conn.create_function("url_host", 1, url_host, deterministic=True)
        if tracer is not None:
            self.conn.set_trace_callback(tracer)
        self.db = Database(self.conn)
        self.depth = 0
        # Taken by its own thread only, but for ``close`` from another: closing a connection
        # while a statement runs on it crashes the interpreter.
        self.lock = threading.RLock()

    @contextmanager
    def snapshot(self) -> Iterator[Database]:
        with self.lock:
            outermost = self.depth == 0
            if outermost:
                self.conn.execute("begin")
            self.depth += 1
            try:
                yield self.db
            finally:
                self.depth -= 1
                if outermost:
                    self.conn.execute("commit")

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class _Ticket(Generic[T]):
    """One thread's work in a group commit, and how it ended."""

    def __init__(self, work: Callable[[Database], T]):
        self.work = work
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done = False

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]
