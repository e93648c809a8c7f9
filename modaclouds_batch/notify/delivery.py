"""The webhook worker: delivers outbox events at least once, with backoff, and records every try.

Each attempt resolves the receiver's host once, checks every address (``targets.py``),
and connects to the address it checked, keeping the name for the ``Host`` header and
for TLS (SNI and certificate): DNS that answers differently the second time cannot move
the request. The connected peer is checked again. No proxy is used.

An attempt has one deadline (``webhook_timeout``) for everything (connect, TLS, sending,
the answer's status line and headers): when it passes, the socket is shut down, however
slowly the receiver trickles bytes. Deliveries run on a small thread pool, at most
``webhook_host_concurrency`` at once to one receiver host and
``webhook_owner_concurrency`` for one user's jobs, so a slow receiver (or a user with
many receivers) holds a bounded share of the senders and never the tracker. The schedule lives in the store, so a
restart resumes where it stopped.
"""

from __future__ import annotations

import email.utils
import http
import http.client
import ipaddress
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import certifi
import tenacity
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util.ssl_match_hostname import CertificateError

from .. import __version__
from ..store import Store, url_host
from ..timefmt import now_iso, parse_iso, to_iso
from . import targets
from .signing import WebhookSecrets
from .targets import UnsafeTarget

log = logging.getLogger(__name__)
MAX_RETRY_AFTER = 3600.0
USER_AGENT = f"modaclouds-batch/{__version__} (webhooks)"
# Answers that say the request itself is wrong here (no such hook, not allowed, too large,
# refused): retrying the same request a day long changes nothing, so after
# ``webhook_permanent_failure_attempts`` of them in a row delivery stops. 410 Gone stops it at once.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 413, 422})
GONE = 410
_TIMES = {1: "once", 2: "twice", 3: "three times"}


def answer_phrase(status: int) -> str:
    """``404 Not Found``: the status with its standard reason."""
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def times(count: int) -> str:
    return _TIMES.get(count, f"{count} times")


class Backoff:
    """Exponential backoff with jitter (tenacity's strategies), by attempt number."""

    def __init__(self, initial: float, maximum: float):
        self._wait = tenacity.wait_exponential(multiplier=initial, max=maximum) + tenacity.wait_random(0, initial)

    def delay(self, attempt: int) -> float:
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        return float(self._wait(state))


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return min(max((when - datetime.now(timezone.utc)).total_seconds(), 0.0), MAX_RETRY_AFTER)


class _Deadline:
    """One attempt's time budget: at the deadline, the attempt's socket is shut down."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def left(self) -> float:
        return max(self.at - time.monotonic(), 0.001)

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                self._shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                self._shut(self._sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: nothing left to cut


class _Pinned:
    """Connects to one checked address whatever the URL's name resolves to now."""

    def __init__(self, address, *args, allow_private: bool, deadline: _Deadline, **kwargs):
        super().__init__(str(address), *args, **kwargs)
        self._pinned = address
        self._allow_private = allow_private
        self._deadline = deadline

    def _new_conn(self) -> socket.socket:
        self.timeout = self._deadline.left()
        sock = super()._new_conn()
        self._deadline.attach(sock)
        peer = ipaddress.ip_address(sock.getpeername()[0].split("%")[0])
        why = targets.refusal(peer, allow_private=self._allow_private)
        if peer != self._pinned or why:
            sock.close()
            raise UnsafeTarget(f"connected to {peer}, not the checked address {self._pinned}" if peer != self._pinned
                               else f"connected to {peer}, which {why}")
        return sock


class _PinnedHTTP(_Pinned, HTTPConnection):
    pass


class _PinnedHTTPS(_Pinned, HTTPSConnection):
    pass


class DeadlinePassed(Exception):
    """The receiver did not answer within the attempt's deadline."""


# What a failed connection or exchange raises, below the deadline's own (urllib3's
# certificate name mismatch is a ValueError).
_EXCHANGE_ERRORS = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError, CertificateError)


def _resolve_within(deadline: _Deadline, target: targets.Target, allow_private: bool,
                    resolver: targets.Resolver | None) -> list:
    """targets.resolve, given up at the deadline: getaddrinfo cannot be interrupted, so it
    runs in a thread of its own, left to finish (within the system resolver's timeouts)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["addresses"] = targets.resolve(target.host, target.port, allow_private=allow_private,
                                                   resolver=resolver)
        except Exception as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="webhook-resolve", daemon=True)
    thread.start()
    thread.join(deadline.left())
    if thread.is_alive():
        raise DeadlinePassed(f"{target.host!r} did not resolve within the {deadline.seconds:g} s deadline")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["addresses"]


def post_pinned(url: str, body: bytes, headers: dict[str, str], *, timeout: float, allow_private: bool,
                resolver: targets.Resolver | None = None) -> tuple[int, dict[str, str]]:
    """POST to ``url`` at an address checked once; returns (status, headers) of the answer.

    Raises UnsafeTarget (refused by policy, or the host does not resolve), DeadlinePassed,
    or the connection's own error. The answer's body is not read.
    """
    target = targets.parse_url(url)
    parts = urlsplit(target.url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = target.host if ":" not in target.host else f"[{target.host}]"
    if parts.port:
        host_header += f":{parts.port}"
    with _Deadline(timeout) as deadline:
        addresses = _resolve_within(deadline, target, allow_private, resolver)
        errors: list[str] = []
        for address in addresses:
            if target.scheme == "https":
                conn = _PinnedHTTPS(address, target.port, allow_private=allow_private, deadline=deadline,
                                    server_hostname=target.host, assert_hostname=target.host,
                                    cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())
            else:
                conn = _PinnedHTTP(address, target.port, allow_private=allow_private, deadline=deadline)
            try:
                try:
                    conn.connect()
                except _EXCHANGE_ERRORS as exc:
                    if deadline.expired:
                        raise DeadlinePassed(f"no connection within the {timeout:g} s deadline") from None
                    errors.append(f"{address}: {type(exc).__name__}: {exc}")
                    continue
                try:
                    conn.request("POST", path, body=body, headers={**headers, "Host": host_header},
                                 preload_content=False)
                    response = conn.getresponse()
                    return response.status, {k.lower(): v for k, v in response.headers.items()}
                except _EXCHANGE_ERRORS:
                    if deadline.expired:
                        raise DeadlinePassed(f"no complete answer within the {timeout:g} s deadline") from None
                    raise
            finally:
                conn.close()
        raise ConnectionError("; ".join(errors))


class WebhookDispatcher:
    def __init__(self, store: Store, settings, workers: int = 4, on_attempt=None,
                 resolver: targets.Resolver | None = None, secrets: WebhookSecrets | None = None):
        self.on_attempt = on_attempt
        self.store = store
        self.timeout = settings.webhook_timeout
        self.give_up_after = settings.webhook_give_up_after
        self.allow_private = settings.private_webhooks_allowed
        # Each notification is signed, at send time, with its job owner's secrets (signing.py).
        self.secrets = secrets or WebhookSecrets(store, settings.webhook_secret_overlap_seconds,
                                                 settings.webhook_secret)
        self.permanent_attempts = max(1, settings.webhook_permanent_failure_attempts)
        self.backoff = Backoff(settings.webhook_backoff_initial, settings.webhook_backoff_max)
        # getaddrinfo, unless a test scripts the answers.
        self.resolver = resolver
        self.workers = workers
        self.per_host = max(1, settings.webhook_host_concurrency)
        self.per_owner = max(1, settings.webhook_owner_concurrency)
        self._pool: ThreadPoolExecutor | None = None
        # event id -> (receiver host, job owner), for the events handed to the pool and not done yet.
        self._in_flight: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="webhook")
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatch_due()
            except Exception:  # the loop must survive anything; the cause is logged
                log.exception("webhook dispatch failed")
            self._wake.wait(1.0)
            self._wake.clear()

    def dispatch_due(self) -> int:
        """Hand due events to the pool, at most ``per_host`` in flight to one receiver host
        and ``per_owner`` for one user's jobs."""
        with self._lock:
            busy = dict(self._in_flight)
        free = self.workers * 2 - len(busy)
        if free <= 0:
            return 0
        counts: dict[tuple[str, str], int] = {}
        for host, owner in busy.values():
            for key in (("host", host), ("owner", owner)):
                counts[key] = counts.get(key, 0) + 1
        most = {"host": self.per_host, "owner": self.per_owner}
        full = {kind: [name for (k, name), n in counts.items() if k == kind and n >= most[kind]] for kind in most}
        due = self.store.due_notifications(now_iso(), free, exclude=busy, per_host=self.per_host,
                                           busy_hosts=full["host"], per_owner=self.per_owner,
                                           busy_owners=full["owner"])
        handed = 0
        for event in due:
            host, owner = url_host(event["url"]), event.get("owner") or ""
            keys = (("host", host), ("owner", owner))
            if any(counts.get(key, 0) >= most[key[0]] for key in keys):
                continue  # its turn comes when one of that host's or that user's deliveries ends
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
            with self._lock:
                self._in_flight[event["id"]] = (host, owner)
            self._pool.submit(self._deliver_and_release, event)
            handed += 1
        return handed

    def _deliver_and_release(self, event: dict[str, Any]) -> None:
        try:
            self.deliver(event)
        except Exception:  # recorded as an attempt below would need the same data; log loudly
            log.exception("delivering %s failed unexpectedly", event["id"])
        finally:
            with self._lock:
                self._in_flight.pop(event["id"], None)
            self._wake.set()

    # --- one delivery -----------------------------------------------------------------

    def headers_for(self, event_id: str, body: str, moment: datetime, owner: str) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": event_id,
            "webhook-timestamp": str(int(moment.timestamp())),
        }
        signature = self.secrets.signature(owner, event_id, moment, body)
        if signature:
            headers["webhook-signature"] = signature
        return headers

    def deliver(self, event: dict[str, Any]) -> str:
        """One attempt; returns the outcome recorded: delivered, pending (retry) or failed."""
        moment = datetime.now(timezone.utc)
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        retry_after: float | None = None
        permanent = False
        refusals = 0  # permanent answers in a row, this one included
        try:
            status_code, headers = post_pinned(
                event["url"], event["payload"].encode(),
                self.headers_for(event["id"], event["payload"], moment, event.get("owner") or ""),
                timeout=self.timeout, allow_private=self.allow_private, resolver=self.resolver)
            if 300 <= status_code < 400:
                # Following it would call an address nobody checked; retrying changes nothing.
                error, permanent = (f"receiver answered {status_code}, a redirect (to "
                                    f"{headers.get('location', 'nowhere')!r}): webhooks do not follow "
                                    "redirects; give the final URL"), True
            elif status_code == GONE:
                error, permanent = f"receiver answered {answer_phrase(status_code)}; delivery stopped", True
            elif status_code in PERMANENT_STATUSES:
                refusals = (event.get("permanent_answers") or 0) + 1
                error, permanent = self._refusal(status_code, refusals), refusals >= self.permanent_attempts
            elif not 200 <= status_code < 300:
                error = f"receiver answered {answer_phrase(status_code)}"
                retry_after = retry_after_seconds(headers.get("retry-after"))
        except targets.Unresolvable as exc:
            error = f"not sent: {exc}"  # fail closed, and try again later: DNS may come back
        except UnsafeTarget as exc:
            error, permanent = f"refused target: {exc}", True
        except DeadlinePassed as exc:
            error = f"Timeout: {exc} (webhook_timeout)"
        except _EXCHANGE_ERRORS as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # still an attempt: recorded, so the event is not retried at once forever
            log.exception("webhook %s to %s failed unexpectedly", event["id"], event["url"])
            error = f"unexpected {type(exc).__name__}: {exc}"
        duration_ms = int((time.monotonic() - started) * 1000)
        at = to_iso(moment)
        attempts = (event.get("attempts") or 0) + 1

        stopped = None
        if error is None:
            outcome, next_at = "delivered", None
        elif permanent or self._expired(event, moment):
            outcome, next_at = "failed", None
            stopped = error if permanent else f"gave up after {attempts} attempts (webhook_give_up_after): {error}"
            error = stopped
            log.warning("webhook %s for job %s: %s", event["id"], event["job_id"], error)
        else:
            delay = max(self.backoff.delay(attempts), retry_after or 0.0)
            outcome, next_at = "pending", to_iso(moment + timedelta(seconds=delay))
            log.info("webhook %s to %s: %s; retry in %.1fs", event["id"], event["url"], error, delay)
        self.store.record_delivery_attempt(
            event["id"], at=at, status_code=status_code, error=error, duration_ms=duration_ms,
            outcome=outcome, next_attempt_at=next_at, url=event["url"], permanent_answers=refusals,
            stopped_reason=stopped,
        )
        if self.on_attempt:
            self.on_attempt(outcome)
        return outcome

    def _refusal(self, status_code: int, count: int) -> str:
        """Short and human: what the receiver said, and whether delivery goes on."""
        said = f"receiver answered {answer_phrase(status_code)}"
        hint = ("; if it checks signatures, give it your secret (GET /webhooks/secret)"
                if status_code in (401, 403) else "")
        if count >= self.permanent_attempts:
            return f"{said} {times(count)}; delivery stopped{hint}"
        return f"{said}{hint}; delivery stops after {self.permanent_attempts} such answers in a row"

    def _expired(self, event: dict[str, Any], moment: datetime) -> bool:
        return (moment - parse_iso(event["created_at"])).total_seconds() > self.give_up_after

