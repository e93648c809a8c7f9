"""The webhook worker: delivers outbox events at least once, with backoff, and records every try.

Deliveries run on a small thread pool with connect/read timeouts, so a receiver that
hangs holds one worker for at most the timeout and never the tracker or other receivers.
The schedule lives in the store, so a restart resumes where it stopped.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import requests
import tenacity
from standardwebhooks import Webhook

from .. import __version__
from ..store import Store
from ..timefmt import now_iso, parse_iso, to_iso
from .targets import UnsafeTarget, check_url

log = logging.getLogger(__name__)
MAX_RETRY_AFTER = 3600.0
USER_AGENT = f"modaclouds-batch/{__version__} (webhooks)"


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


class WebhookDispatcher:
    def __init__(self, store: Store, settings, session: requests.Session | None = None, workers: int = 4,
                 on_attempt=None):
        self.on_attempt = on_attempt
        self.store = store
        self.timeout = settings.webhook_timeout
        self.give_up_after = settings.webhook_give_up_after
        self.allow_private = settings.private_webhooks_allowed
        self.signer = Webhook(settings.webhook_secret) if settings.webhook_secret else None
        self.backoff = Backoff(settings.webhook_backoff_initial, settings.webhook_backoff_max)
        self.session = session or requests.Session()
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: set[str] = set()
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
        with self._lock:
            busy = set(self._in_flight)
        free = self.workers * 2 - len(busy)
        if free <= 0:
            return 0
        due = self.store.due_notifications(now_iso(), free, exclude=busy)
        for event in due:
            with self._lock:
                self._in_flight.add(event["id"])
            self._pool.submit(self._deliver_and_release, event)
        return len(due)

    def _deliver_and_release(self, event: dict[str, Any]) -> None:
        try:
            self.deliver(event)
        except Exception:  # recorded as an attempt below would need the same data; log loudly
            log.exception("delivering %s failed unexpectedly", event["id"])
        finally:
            with self._lock:
                self._in_flight.discard(event["id"])
            self._wake.set()

    # --- one delivery -----------------------------------------------------------------

    def headers_for(self, event_id: str, body: str, moment: datetime) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": event_id,
            "webhook-timestamp": str(int(moment.timestamp())),
        }
        if self.signer:
            headers["webhook-signature"] = self.signer.sign(event_id, moment, body)
        return headers

    def deliver(self, event: dict[str, Any]) -> str:
        """One attempt; returns the outcome recorded: delivered, pending (retry) or failed."""
        moment = datetime.now(timezone.utc)
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        retry_after: float | None = None
        permanent = False
        try:
            check_url(event["url"], allow_private=self.allow_private)
            response = self.session.post(
                event["url"], data=event["payload"].encode(),
                headers=self.headers_for(event["id"], event["payload"], moment),
                timeout=(self.timeout, self.timeout), allow_redirects=False, stream=True,
            )
            response.close()
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"receiver answered {status_code}"
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                permanent = status_code == 410
        except UnsafeTarget as exc:
            error, permanent = f"refused target: {exc}", True
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"
        duration_ms = int((time.monotonic() - started) * 1000)
        at = to_iso(moment)
        attempts = (event.get("attempts") or 0) + 1

        if error is None:
            outcome, next_at = "delivered", None
        elif permanent or self._expired(event, moment):
            outcome, next_at = "failed", None
            error = f"gave up after {attempts} attempts: {error}"
            log.warning("webhook %s for job %s: %s", event["id"], event["job_id"], error)
        else:
            delay = max(self.backoff.delay(attempts), retry_after or 0.0)
            outcome, next_at = "pending", to_iso(moment + timedelta(seconds=delay))
            log.info("webhook %s to %s: %s; retry in %.1fs", event["id"], event["url"], error, delay)
        self.store.record_delivery_attempt(
            event["id"], at=at, status_code=status_code, error=error, duration_ms=duration_ms,
            outcome=outcome, next_attempt_at=next_at,
        )
        if self.on_attempt:
            self.on_attempt(outcome)
        return outcome

    def _expired(self, event: dict[str, Any], moment: datetime) -> bool:
        return (moment - parse_iso(event["created_at"])).total_seconds() > self.give_up_after
