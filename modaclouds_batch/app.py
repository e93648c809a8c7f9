"""The one place that wires the gateway together."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass

import falcon
import falcon.media

from . import errors
from .access.audit import AuditLog
from .access.quota import QuotaService
from .access.tokens import TokenService
from .api import bodies
from .api import errors as api_errors
from .api.access import (
    AuditResource,
    Authenticate,
    QuotaResource,
    TokenResource,
    TokensResource,
    UserLimitsResource,
)
from .api.docs import DocsAssetResource, DocsPageResource, OpenAPIResource
from .api.health import HealthResource
from .api.index import IndexResource
from .api.workers import (
    PoolResource,
    WorkerDrainResource,
    WorkerRequestsResource,
    WorkerResource,
    WorkersResource,
    WorkerUndrainResource,
)
from .condor.collector import CollectorClient
from .infra.providers import CommandProvider
from .infra.service import InfraService
from .condor.schedd import CondorClient
from .data.service import DataService
from .dialects import all_dialects, openapi_description
from .jobs.service import JobService
from .jobs.tracker import Tracker, remove_orphan_dirs
from .notify.delivery import WebhookDispatcher
from .notify.events import events_for_change
from .observability import Metrics, MetricsResource, RequestMetrics, JobsByState, request_id_var
from .settings import Settings
from .store import Store
from .timefmt import now_iso

log = logging.getLogger(__name__)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass
class Gateway:
    """The gateway's long-lived parts; nothing here contacts the pool when built."""

    settings: Settings
    store: Store
    condor: CondorClient
    service: JobService
    tracker: Tracker
    webhooks: WebhookDispatcher
    tokens: TokenService
    quota: QuotaService
    audit: AuditLog
    infra: InfraService
    metrics: Metrics

    def start_background(self) -> None:
        removed = remove_orphan_dirs(self.settings.jobs_dir, self.store.known_job_dirs(), self.service.in_flight())
        if removed:
            log.info("removed %d job folders left by unfinished submissions", removed)
        if self.store.clear_charges():
            log.info("dropped the quota charges of submissions a stopped gateway left unfinished")
        stale = self.store.fail_unfinished_worker_requests(now_iso())
        if stale:
            log.warning("marked %d worker requests failed: the gateway stopped while they ran", stale)
        self.tracker.start()
        self.webhooks.start()

    def shutdown(self) -> None:
        self.tracker.shutdown()
        self.webhooks.shutdown()
        self.store.close()


def build_gateway(settings: Settings) -> Gateway:
    settings = settings.resolved()
    metrics = Metrics()

    def on_state_change(job):
        metrics.transitions.labels(job["state"]).inc()
        return events_for_change(job, settings.base_url)

    store = Store(settings.db_path, on_state_change=on_state_change)
    metrics.registry.register(JobsByState(store.count_by_state))
    condor = CondorClient(settings.condor_config)
    audit = AuditLog(store)
    data = DataService(settings, store, audit)
    infra = InfraService(store, CollectorClient(settings.condor_config), audit, _providers(settings),
                         cache_seconds=settings.pool_cache_seconds)
    quota = QuotaService(settings, store)
    service = JobService(settings, store, condor, audit, data, runtimes=infra.runtimes, offers=infra.offers,
                         reserve=quota.reserve)
    webhooks = WebhookDispatcher(store, settings, workers=settings.webhook_workers,
                                 on_attempt=lambda outcome: metrics.webhooks.labels(outcome).inc())

    def on_cycle(report):
        metrics.on_cycle(report)
        if report.changes:
            webhooks.wake()

    tracker = Tracker(service, settings.tracker_interval, on_cycle=on_cycle, workers=infra.capacity)
    return Gateway(settings, store, condor, service, tracker, webhooks,
                   TokenService(store), quota, audit, infra, metrics)


def _providers(settings: Settings) -> dict:
    """Capacity providers: a local one for the managed pool, an operator's command if configured."""
    providers = {}
    if settings.manages_pool:
        from .infra.local_provider import LocalProvider

        providers["local"] = LocalProvider(settings)
    if settings.worker_provider_command:
        providers["command"] = CommandProvider(
            settings.worker_provider_command, f"127.0.0.1:{settings.collector_port}")
    return providers


class RequestContext:
    """Gives every request an id (echoed as X-Request-Id)."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header("X-Request-Id")
        req.context.request_id = given if given and _REQUEST_ID_RE.match(given) else str(uuid.uuid4())
        request_id_var.set(req.context.request_id)
        resp.set_header("X-Request-Id", req.context.request_id)


def create_app(gateway: Gateway) -> falcon.App:
    app = falcon.App(middleware=[
        RequestContext(), RequestMetrics(gateway.metrics),
        Authenticate(gateway.tokens, gateway.settings.auth_enabled)])
    multipart = falcon.media.MultipartFormHandler()
    multipart.parse_options.max_body_part_count = 16
    # A form field (not a file) is buffered up to the same cap as a whole JSON body.
    multipart.parse_options.max_body_part_buffer_size = gateway.settings.max_body_bytes
    app.req_options.media_handlers[falcon.MEDIA_MULTIPART] = multipart
    app.req_options.media_handlers[falcon.MEDIA_JSON] = bodies.BoundedJSONHandler(gateway.settings.max_body_bytes)
    app.req_options.media_handlers[falcon.MEDIA_URLENCODED] = bodies.BoundedFormHandler(gateway.settings.max_body_bytes)
    app.req_options.strip_url_path_trailing_slash = True

    app.add_error_handler(Exception, api_errors.handle_unexpected)
    app.add_error_handler(errors.GatewayError, api_errors.handle_gateway_error)
    app.set_error_serializer(api_errors.serialize_http_error)

    dialects = all_dialects()
    app.add_route("/", IndexResource(dialects))
    app.add_route("/health", HealthResource(gateway.condor))
    app.add_route("/metrics", MetricsResource(gateway.metrics))
    app.add_route("/openapi.json", OpenAPIResource(openapi_description(dialects)))
    app.add_route("/docs", DocsPageResource())
    app.add_route("/docs/{asset}", DocsAssetResource())
    for dialect in dialects:
        dialect.register(app, gateway)
    app.add_route("/pool", PoolResource(gateway.infra))
    app.add_route("/workers", WorkersResource(gateway.infra))
    app.add_route("/workers/requests", WorkerRequestsResource(gateway.infra))
    app.add_route("/workers/{name}", WorkerResource(gateway.infra))
    app.add_route("/workers/{name}/drain", WorkerDrainResource(gateway.infra))
    app.add_route("/workers/{name}/undrain", WorkerUndrainResource(gateway.infra))
    app.add_route("/tokens", TokensResource(gateway.tokens, gateway.audit))
    app.add_route("/tokens/{token_id}", TokenResource(gateway.tokens, gateway.audit))
    app.add_route("/quota", QuotaResource(gateway.quota))
    app.add_route("/users/{user}/limits", UserLimitsResource(gateway.quota, gateway.audit))
    app.add_route("/audit", AuditResource(gateway.audit))
    return app
