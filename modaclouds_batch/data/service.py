"""Data objects: stored under <home>/data/<id>, content-addressed by their sha256 (the ETag).

Knows data and its owners; knows nothing of HTTP.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

from .. import errors
from ..access.audit import AuditLog
from ..access.identity import Actor
from ..home import open_private, private_dir
from ..errors import Conflict, Gone, InvalidRequest, NotFound, NotYours, TooLarge
from ..jobs.states import ACTIVE_STATES
from ..store import Store
from ..timefmt import now_iso, to_iso

log = logging.getLogger(__name__)
COPY_CHUNK = 1024 * 1024
# Where an upload is received before it becomes a data object (renamed into place).
INCOMING_PREFIX = ".incoming-"
# The longest ttl of a job or data object: a century (much longer overflows the calendar).
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


def safe_filename(name: str | None, fallback: str) -> str:
    """A file name that is safe in a job sandbox and in a Content-Disposition header."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    base = _SAFE_NAME.sub("_", base).lstrip(".")
    return base[:200] or fallback


@dataclass(frozen=True)
class Received:
    path: Path
    size: int
    sha256: str


def receive_stream(stream: BinaryIO, dest: Path, limit: int, what: str) -> Received:
    """Copy a stream to ``dest`` in chunks with its sha256; past ``limit`` nothing is kept."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open_private(dest) as out:
            while chunk := stream.read(COPY_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"{what} is larger than the {limit}-byte upload limit", limit=limit)
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return Received(dest, size, digest.hexdigest())


def link_or_copy(src: Path, dest: Path) -> None:
    """Jobs get data by hard link (same file system, no copy); a copy otherwise."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o600)


class DataService:
    def __init__(self, settings, store: Store, audit: AuditLog):
        self.root = Path(settings.home) / "data"
        self.store = store
        self.audit = audit
        self.max_upload_bytes = settings.max_upload_bytes
        # Answers (a job's output as a data object) are cleaned up with their job.
        self.retention = settings.job_retention_seconds

    def _staging_path(self) -> Path:
        private_dir(self.root)
        return self.root / f"{INCOMING_PREFIX}{uuid.uuid4()}"

    def sweep_incoming(self) -> int:
        """Uploads a stopped gateway left half-received; run at start-up, under the home's lock."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for leftover in self.root.glob(f"{INCOMING_PREFIX}*"):
            try:
                leftover.unlink()
                removed += 1
            except OSError as exc:
                log.warning("could not remove the unfinished upload %s: %s", leftover, exc)
        return removed

    # --- create / read -----------------------------------------------------------------

    def create(self, actor: Actor, stream: BinaryIO, *, filename: str | None, content_type: str | None,
               limit: int | None = None, ttl: int | None = None, request_id: str | None = None) -> dict[str, Any]:
        data_id = str(uuid.uuid4())
        received = receive_stream(stream, self._staging_path(), min(limit or self.max_upload_bytes, self.max_upload_bytes), "the upload")
        name = safe_filename(filename, data_id)
        row = self._row(data_id, actor.user, name, content_type, received, ttl=ttl)
        try:
            received.path.rename(Path(row["path"]))
            self.store.insert_data(row)
        except BaseException:
            received.path.unlink(missing_ok=True)
            Path(row["path"]).unlink(missing_ok=True)
            raise
        self.audit.record(actor, "data.create", data_id, request_id=request_id,
                          detail={"size": received.size, "filename": name})
        return row

    def register_file(self, owner: str, src: Path, filename: str, content_type: str, source_job_id: str,
                      job_expires_at: str | None = None) -> dict[str, Any]:
        """A job's answer as a data object (hard-linked, no copy); the caller stores the row.

        The answer expires with its job: at the job's ttl, or ``job_retention_seconds`` after
        now (when the job ended), whichever comes first; PATCH its metadata to keep it longer.
        """
        data_id = str(uuid.uuid4())
        digest = hashlib.sha256()
        with open(src, "rb") as fh:
            while chunk := fh.read(COPY_CHUNK):
                digest.update(chunk)
        private_dir(self.root)
        row = self._row(data_id, owner, filename, content_type,
                        Received(src, src.stat().st_size, digest.hexdigest()), source_job_id=source_job_id)
        row["expires_at"] = self._answer_expiry(job_expires_at)
        link_or_copy(src, Path(row["path"]))
        os.chmod(row["path"], 0o600)
        return row

    def _answer_expiry(self, job_expires_at: str | None) -> str | None:
        candidates = [job_expires_at] if job_expires_at else []
        if self.retention:
            candidates.append(to_iso(datetime.now(timezone.utc) + timedelta(seconds=self.retention)))
        return min(candidates) if candidates else None

    def _row(self, data_id, owner, filename, content_type, received: Received, ttl=None, source_job_id=None):
        now = now_iso()
        if ttl is not None and not 0 < ttl <= MAX_TTL_SECONDS:
            raise InvalidRequest(f"ttl must be a positive number of seconds, at most {MAX_TTL_SECONDS}", field="ttl")
        return {
            "id": data_id, "owner": owner, "filename": filename,
            "content_type": content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream",
            "size": received.size, "sha256": received.sha256, "path": str(self.root / data_id),
            "source_job_id": source_job_id, "created_at": now, "updated_at": now,
            "expires_at": to_iso(datetime.now(timezone.utc) + timedelta(seconds=ttl)) if ttl else None,
        }

    def get(self, actor: Actor, data_id: str) -> dict[str, Any]:
        try:
            uuid.UUID(data_id)
        except ValueError:
            raise InvalidRequest(f"'{data_id}' is not a data id; data ids are UUIDs") from None
        row = self.store.get_data(data_id)
        if row is None or not actor.may_see(row["owner"]):
            message = f"no data object {data_id}; GET /data lists yours"
            raise NotFound(message) if row is None else NotYours(message, target=data_id)
        if row["expires_at"] and row["expires_at"] <= now_iso():
            raise Gone(f"data object {data_id} has expired")
        return row

    def list(self, actor: Actor, owner: str | None, limit: int, offset: int):
        if not actor.is_admin:
            owner = actor.user
        return self.store.list_data(owner, limit, offset)

    def for_job(self, actor: Actor, data_id: str, field: str) -> dict[str, Any]:
        """A data object a job is about to use, with the field named in any refusal."""
        try:
            return self.get(actor, data_id)
        except (NotFound, InvalidRequest, Gone) as exc:
            raise type(exc)(f"{field}: {exc.message}", field=field) from None

    def note_archive_check(self, data_id: str, sha256: str, verdict: str, *, links: bool) -> None:
        """Remember that this exact content passed the archive checks (keyed by its sha256),
        as a ``bundle`` or an ``archive``, and whether it holds symlinks."""
        check = f"{verdict}:{sha256}:{'links' if links else 'nolinks'}"
        self.store.update_data(data_id, {"archive_check": check}, expected_sha256=sha256)

    @staticmethod
    def archive_check(row: dict[str, Any]) -> tuple[str, bool] | None:
        """(verdict, holds symlinks) noted for the row's current content, or None.

        Checks noted before symlinks were recorded count as none: they are checked again."""
        verdict, _, rest = (row.get("archive_check") or "").partition(":")
        sha256, _, links = rest.partition(":")
        if sha256 != row["sha256"] or links not in ("links", "nolinks"):
            return None
        return verdict, links == "links"

    # --- change ----------------------------------------------------------------------------

    def replace(self, actor: Actor, data_id: str, stream: BinaryIO, *, if_match: str | None,
                content_type: str | None, filename: str | None, limit: int | None = None,
                request_id: str | None = None) -> dict[str, Any]:
        row = self.get(actor, data_id)
        expected = if_match.strip().strip('"') if if_match else None
        if expected is not None and expected != row["sha256"]:
            raise _changed_since_read(row["sha256"])
        received = receive_stream(stream, self._staging_path(), min(limit or self.max_upload_bytes, self.max_upload_bytes), "the upload")
        values = {
            "size": received.size, "sha256": received.sha256, "updated_at": now_iso(), "archive_check": None,
            "content_type": content_type or row["content_type"],
            "filename": safe_filename(filename, row["filename"]) if filename else row["filename"],
        }
        # A new inode: jobs already holding a hard link to the old content keep it.
        os.replace(received.path, row["path"])
        if not self.store.update_data(data_id, values, expected_sha256=row["sha256"]):
            raise _changed_since_read(self.store.get_data(data_id)["sha256"])
        self.audit.record(actor, "data.replace", data_id, request_id=request_id, detail={"size": received.size})
        return {**row, **values}

    def set_ttl(self, actor: Actor, data_id: str, ttl: Any, request_id: str | None = None) -> dict[str, Any]:
        """Expire the object ``ttl`` seconds from now, or never with None: how an answer
        object is kept beyond its job."""
        row = self.get(actor, data_id)
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TTL_SECONDS):
            raise InvalidRequest(
                f"ttl must be a whole number of seconds from 1 to {MAX_TTL_SECONDS}, or null to keep the object",
                field="ttl")
        values = {"expires_at": to_iso(datetime.now(timezone.utc) + timedelta(seconds=ttl)) if ttl else None,
                  "updated_at": now_iso()}
        self.store.update_data(data_id, values)
        self.audit.record(actor, "data.ttl", data_id, request_id=request_id, detail={"ttl": ttl})
        return {**row, **values}

    def delete(self, actor: Actor, data_id: str, request_id: str | None = None) -> None:
        row = self.get(actor, data_id)
        users = self.store.jobs_using_data(data_id, (s.value for s in ACTIVE_STATES))
        if users:
            raise Conflict(
                f"data object {data_id} is still needed by {len(users)} queued or running job(s); "
                "wait for them to end or remove them", jobs=users[:20],
            )
        self.store.delete_data(data_id)
        Path(row["path"]).unlink(missing_ok=True)
        self.audit.record(actor, "data.delete", data_id, request_id=request_id)

    def discard_answer(self, data_id: str, job_id: str) -> bool:
        """Delete a deleted job's answer object, unless a queued or running job still uses it."""
        row = self.store.get_data(data_id)
        if row is None or row.get("source_job_id") != job_id:
            return False
        if self.store.jobs_using_data(data_id, (s.value for s in ACTIVE_STATES)):
            return False
        self.store.delete_data(data_id)
        Path(row["path"]).unlink(missing_ok=True)
        return True

    def expire(self) -> int:
        """Remove data objects whose ttl has passed and that no active job needs."""
        removed = 0
        for row in self.store.expired_data(now_iso()):
            if self.store.jobs_using_data(row["id"], (s.value for s in ACTIVE_STATES)):
                continue
            self.store.delete_data(row["id"])
            Path(row["path"]).unlink(missing_ok=True)
            removed += 1
        return removed


def _changed_since_read(current_etag: str) -> errors.PreconditionFailed:
    return errors.PreconditionFailed(
        "the data object changed since you read it (If-Match does not match its ETag); GET it again and retry",
        etag=current_etag,
    )
