"""``Idempotency-Key`` on submit routes: a retried submission gets the first answer, not a second job.

A client that lost the answer to a POST sends it again with the same key. Within
``idempotency_window_seconds`` the same key from the same user with the same request
(method, path and query, ``Content-Type`` and ``Content-Encoding``, body bytes: see
:func:`fingerprint`) answers what the first one answered, with ``Idempotent-Replayed: true``;
the same key with another request is 422; while the first is still being answered, 409 with
``Retry-After`` (the client asks again, the gateway does not hold a thread waiting).

Which answers are kept: successes, and the refusals the same request would meet again
(:data:`REPLAYED_REFUSALS`). Anything else (409, 429, 5xx: the gateway or HTCondor could not
do it now) releases the key, so a retry tries again.

The key is claimed when the request arrives and tied to the submission's job ids, durably
and before the schedd submit (``JobService._queue``); a gateway killed after the schedd
accepted the jobs records them at its next start (``JobSubmission.recover_keyed_submissions``)
and a retry gets an answer rebuilt from them by the route itself (``submit_job`` returns
those jobs instead of submitting).

Apply it to a route: decorate the responder with ``@idempotent`` (its submission must go
through ``api.jobs.submit_job``); the :class:`IdempotentSubmissions` middleware, installed
once in ``app.py``, does the rest.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import IO, Any

import falcon

from ..errors import InProgress, InvalidRequest, Unprocessable
from ..timefmt import to_iso

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Refusals the same request meets again, so they are replayed like successes. Not 408, 409,
# 425, 429 (retry later) nor 5xx: those release the key.
REPLAYED_REFUSALS = frozenset({400, 403, 404, 405, 410, 411, 413, 414, 415, 422})
# The answer's headers a replay repeats (the others are made afresh, e.g. X-Request-Id).
KEPT_HEADERS = ("Location", "Content-Type", "Content-Location", "Link", "X-Job-Id")
# What a 409 tells a client to wait before asking again, in seconds.
RETRY_AFTER_SECONDS = 2
# A body up to this size is copied in memory; beyond, to an unnamed file in the gateway's home.
IN_MEMORY_BODY = 1 << 20
CHUNK = 1 << 20


@dataclass
class Claim:
    """The key a request holds while it is answered."""

    owner: str
    key: str
    body: IO[bytes] = field(repr=False)
    # The key's row when its jobs exist but their answer was never stored (a restart
    # recorded them): the route rebuilds the answer from these jobs instead of submitting.
    recovered: dict[str, Any] | None = None


_claim: ContextVar[Claim | None] = ContextVar("idempotency_claim", default=None)


def current_claim() -> Claim | None:
    """The key of the submission this thread is answering, if it came with one."""
    return _claim.get()


def idempotent(responder):
    """Make a submit responder honour ``Idempotency-Key`` (see the module's docstring)."""

    @functools.wraps(responder)
    def answer(resource, req: falcon.Request, resp: falcon.Response, *args, **kwargs):
        keys: IdempotentSubmissions | None = getattr(req.context, "idempotency", None)
        key = req.get_header(HEADER)
        if key is None or keys is None:
            return responder(resource, req, resp, *args, **kwargs)
        claim = keys.begin(req, resp, key)
        if claim is None:  # replayed
            return None
        token = _claim.set(claim)
        try:
            responder(resource, req, resp, *args, **kwargs)
        finally:
            _claim.reset(token)
        if claim.recovered is not None:  # the answer rebuilt from the jobs the first request made
            resp.set_header(REPLAYED_HEADER, "true")
        return None

    answer.idempotent = True
    return answer


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        raise InvalidRequest(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters, "
                             "e.g. a UUID the client made for this submission", field=HEADER)
    return key


class _BodyDigest:
    """SHA-256 of a body as it streams by, a multipart boundary replaced by a fixed token:
    clients pick a new random boundary for every request (curl -F, requests), so the same
    form sent twice differs only there."""

    def __init__(self, boundary: str | None):
        self.hash = hashlib.sha256()
        self.delimiter = b"--" + boundary.encode("latin-1") if boundary else None
        self.tail = b""

    def update(self, data: bytes) -> None:
        if not self.delimiter:
            self.hash.update(data)
            return
        # A delimiter may straddle two chunks: hold back what could be its start. The token
        # ("--" then a NUL, which no boundary holds) cannot begin a delimiter itself.
        data = (self.tail + data).replace(self.delimiter, b"--\0")
        keep = len(self.delimiter) - 1
        self.hash.update(data[:-keep])
        self.tail = data[-keep:]

    def hexdigest(self) -> str:
        self.hash.update(self.tail)
        self.tail = b""
        return self.hash.hexdigest()


def _boundary(content_type: str) -> str | None:
    media, _, params = content_type.partition(";")
    if media.strip().lower() != falcon.MEDIA_MULTIPART:
        return None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"') or None
    return None


def _content_type_meaning(content_type: str) -> str:
    """The Content-Type without its multipart boundary, normalised."""
    media, _, params = content_type.partition(";")
    kept = sorted(p.strip().lower() for p in params.split(";")
                  if p.strip() and p.partition("=")[0].strip().lower() != "boundary")
    return ";".join([media.strip().lower(), *kept])


def fingerprint(req: falcon.Request, body_digest: str) -> str:
    """What makes two requests the same one: method, path and query, the headers that
    change what the body means, and the body (boundary aside)."""
    parts = [req.method, req.path, req.query_string or "", _content_type_meaning(req.content_type or ""),
             (req.get_header("Content-Encoding") or "").lower(), body_digest]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class IdempotentSubmissions:
    """Middleware: hands the ``@idempotent`` responders the keys, and keeps (or releases) a
    claimed key with the request's answer once it is made."""

    def __init__(self, store, window_seconds: int, spool_dir=None):
        self.store = store
        self.window = timedelta(seconds=window_seconds)
        self.spool_dir = spool_dir

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.idempotency = self

    def begin(self, req: falcon.Request, resp: falcon.Response, key: str) -> Claim | None:
        """Claim ``key`` for this request (a Claim: answer it), or answer from the key's
        first request (None: the answer is in ``resp``); 409, 422 as the module says."""
        check_key(key)
        owner = req.context.actor.user
        body, digest = self._copy_body(req)
        try:
            printed = fingerprint(req, digest)
            now = datetime.now(timezone.utc)
            row = self.store.claim_idempotency_key(owner, key, printed, to_iso(now), to_iso(now + self.window))
            if row is not None:
                if row["fingerprint"] != printed:
                    raise Unprocessable(
                        f"this {HEADER} was used at {row['created_at']} for another request (method, path, "
                        "Content-Type or body differ); send a new key for a new submission", field=HEADER)
                if row["state"] in ("processing", "unsettled"):
                    raise InProgress(f"the first request with this {HEADER} is still being answered; "
                                     f"send it again in {RETRY_AFTER_SECONDS} s for its answer",
                                     retry_after=RETRY_AFTER_SECONDS, field=HEADER)
                if row["state"] == "done":
                    _replay(resp, row)
                    body.close()
                    return None
        except BaseException:
            body.close()
            raise
        claim = Claim(owner, key, body, recovered=row)
        # The route reads the copy, as it would have read the request.
        req.env["wsgi.input"] = req.stream = body
        req.context.idempotency_claim = claim
        return claim

    def _copy_body(self, req: falcon.Request) -> tuple[IO[bytes], str]:
        """The body, read once to its end into a copy the route reads afterwards, and its digest."""
        remaining = req.content_length or 0
        digest = _BodyDigest(_boundary(req.content_type or ""))
        copy = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY_BODY, dir=self.spool_dir)
        try:
            while remaining > 0:
                chunk = req.stream.read(min(CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                digest.update(chunk)
                copy.write(chunk)
            copy.seek(0)
        except BaseException:
            copy.close()
            raise
        return copy, digest.hexdigest()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        claim: Claim | None = getattr(req.context, "idempotency_claim", None)
        if claim is None:
            return
        claim.body.close()
        try:
            self._settle(claim, resp)
        except Exception:  # the answer goes out regardless; the key is released or expires
            log.exception("could not keep the answer of %s %s for its %s", req.method, req.path, HEADER)

    def _settle(self, claim: Claim, resp: falcon.Response) -> None:
        status = falcon.http_status_to_code(resp.status)
        if (200 <= status < 300 or status in REPLAYED_REFUSALS) and resp.stream is None:
            headers = [(name, value) for name in KEPT_HEADERS if (value := resp.get_header(name))]
            if not resp.get_header("Content-Type"):  # a media answer, in the app's default type
                headers.append(("Content-Type", falcon.MEDIA_JSON))
            self.store.finish_idempotency_key(claim.owner, claim.key, status, headers, resp.render_body() or b"")
        elif claim.recovered is not None:
            pass  # its jobs exist: the next retry rebuilds their answer again
        else:
            row = self.store.idempotency_key(claim.owner, claim.key)
            if row and row["job_ids"] and self.store.get_job(row["job_ids"][0]) is not None:
                self.store.mark_idempotency_key(claim.owner, claim.key, "recovered")
            else:
                self.store.release_idempotency_key(claim.owner, claim.key)


def _replay(resp: falcon.Response, row: dict[str, Any]) -> None:
    resp.status = falcon.code_to_http_status(row["status"])
    for name, value in row["headers"]:
        resp.set_header(name, value)
    resp.data = row["body"] or b""
    resp.set_header(REPLAYED_HEADER, "true")
