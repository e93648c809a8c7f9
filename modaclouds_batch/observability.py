"""Metrics (Prometheus, via prometheus-client) and structured JSON logs with request ids.

Metrics live in the gateway's own registry, not the library's global one, so several
gateways (tests) in one process do not mix their figures.
"""

from __future__ import annotations

import contextvars
import logging
import time

import falcon
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from pythonjsonlogger.json import JsonFormatter

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
access_log = logging.getLogger("modaclouds_batch.access")


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.submissions = Counter("gateway_job_submissions", "Jobs queued (array items count one each)", registry=r)
        self.transitions = Counter("gateway_job_state_transitions", "Jobs entering a state", ["state"], registry=r)
        self.tracker_cycle = Histogram("gateway_tracker_cycle_seconds", "Duration of one tracker cycle", registry=r,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.tracker_round_trips = Gauge("gateway_tracker_schedd_round_trips",
                                         "Schedd round trips of the last tracker cycle", registry=r)
        self.tracker_round_trips_total = Counter("gateway_tracker_schedd_round_trips_all",
                                                 "Schedd round trips of all tracker cycles", registry=r)
        self.tracker_errors = Counter("gateway_tracker_errors", "Tracker cycle errors", registry=r)
        self.webhooks = Counter("gateway_webhook_attempts", "Webhook delivery attempts by outcome",
                                ["outcome"], registry=r)
        self.requests = Histogram("gateway_http_request_seconds", "HTTP request latency",
                                  ["method", "route", "status"], registry=r,
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))

    def on_cycle(self, report) -> None:
        self.tracker_cycle.observe(report.duration)
        self.tracker_round_trips.set(report.round_trips)
        self.tracker_round_trips_total.inc(report.round_trips)
        if report.errors:
            self.tracker_errors.inc(len(report.errors))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class JobsByState:
    """Jobs per state, read from the store at scrape time (one grouped query)."""

    def __init__(self, counts):
        self.counts = counts

    def collect(self):
        family = GaugeMetricFamily("gateway_jobs", "Jobs the gateway knows, by state", labels=["state"])
        for state, count in sorted(self.counts().items()):
            family.add_metric([state], count)
        yield family


class RequestMetrics:
    """Falcon middleware: latency by route template, and one JSON access-log line a request."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        started = getattr(req.context, "started", None)
        if started is None:
            return
        elapsed = time.perf_counter() - started
        route = req.uri_template or "unrouted"
        status = resp.status.split()[0] if isinstance(resp.status, str) else str(int(resp.status))
        self.metrics.requests.labels(req.method, route, status).observe(elapsed)
        actor = getattr(req.context, "actor", None)
        access_log.info("request", extra={
            "method": req.method, "route": route, "path": req.path, "status": int(status),
            "duration_ms": round(elapsed * 1000, 2), "user": actor.user if actor else None})
        request_id_var.set(None)


class MetricsResource:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.actor.require_admin("metrics")
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = self.metrics.exposition()


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """JSON lines (default) or plain text on stderr; every line carries the request id."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
