"""The one place that wires the gateway together."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import falcon
import falcon.media

from . import errors
from .access.audit import AuditLog, client_address_var
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
from .api.guard import REQUEST_ID_RE, Guard, RequestGuard, body_allowance
from .api.docs import DocsAssetResource, DocsPageResource, OpenAPIResource
from .api.health import HealthResource
from .api.idempotency import IdempotentSubmissions
from .api.index import IndexResource
from .api.webhooks import WebhookSecretResource, WebhookSecretRotateResource
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
from .condor.events import EventLogFollower, event_log_path
from .condor.schedd import CondorClient, configure
from .data.service import DataService
from .dialects import all_dialects, openapi_description
from .home import mark_home
from .jobs.ends import JobEnds
from .jobs.in_flight import InFlight
from .jobs.retention import Retention, remove_orphan_dirs
from .jobs.service import JobService
from .jobs.submission import JobSubmission
from .jobs.tracker import Tracker
from .notify.control import NotificationControl
from .notify.delivery import WebhookDispatcher
from .notify.events import events_for_change
from .notify.signing import WebhookSecrets
from .observability import Metrics, MetricsResource, RequestMetrics, JobsByState, request_id_var
from .settings import Settings, is_loopback_address
from .store import Store
from .timefmt import now_iso

log = logging.getLogger(__name__)


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
    webhook_secrets: WebhookSecrets
    notifications: NotificationControl
    # Submission (staging, submit, keyed recovery); ``service`` is the reads and actions.
    submission: JobSubmission
    retention: Retention
    # Who hears of ended jobs (dialects register with ``ends.on_jobs_ended``).
    ends: JobEnds
    # Follows the schedd's event log when the client config names one the gateway can read.
    schedd_events: EventLogFollower | None = None

    def start_background(self) -> None:
        """Clean up after a previous process, then start the threads.

        ``serve`` calls this holding the home's and the database's locks (home.claim), so
        no other process is submitting on this state: what looks unfinished is.
        """
        previous = mark_home(self.settings.home, self.store.instance_id)
        if previous:
            log.warning("home %s was last served by gateway instance %s (another database); "
                        "its job folders are left alone", self.settings.home, previous)
        # Before the intents go: a keyed submission's jobs the schedd accepted get their rows.
        unsettled = self.submission.recover_keyed_submissions(at_start=True)
        intents = self.store.clear_intents(keep=unsettled)
        if intents:
            log.info("dropped %d submission intents of a process that stopped mid-submission", intents)
        removed = remove_orphan_dirs(self.settings.jobs_dir, self.store.known_job_dirs(), self.submission.in_flight(),
                                     self.store.instance_id)
        if removed:
            log.info("removed %d job folders left by unfinished submissions", removed)
        if self.store.clear_charges():
            log.info("dropped the quota charges of submissions a stopped gateway left unfinished")
        incoming = self.service.data.sweep_incoming()
        if incoming:
            log.info("removed %d unfinished uploads of data objects", incoming)
        stale = self.store.fail_unfinished_worker_requests(now_iso())
        if stale:
            log.warning("marked %d worker requests failed: the gateway stopped while they ran", stale)
        slot_work = self.store.end_unfinished_slot_work(now_iso())
        if slot_work:
            log.info("ended %d slot leases' transfers or submissions that a stopped gateway left unfinished", slot_work)
        self.infra.check_added_workers(at_start=True)
        self.tracker.start()
        self.webhooks.start()
        self._follow_schedd_events()

    def _follow_schedd_events(self) -> None:
        """Wake the tracker on the schedd's job events; without them its poll still finds every change."""
        configure(self.settings.condor_config)
        path = event_log_path()
        if path is None:
            log.info("the client config names no schedd event log: the tracker polls every %s s",
                     self.settings.tracker_interval)
            return
        self.schedd_events = EventLogFollower(path, self.tracker.heard_of_change)
        self.schedd_events.start()
        log.info("following the schedd's event log %s", path)

    def shutdown(self) -> None:
        if self.schedd_events:
            self.schedd_events.shutdown()
        self.tracker.shutdown()
        self.webhooks.shutdown()
        self.submission.validations.shutdown()
        self.infra.shutdown()
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
    audit = AuditLog(store, settings.audit_refusals_per_minute)
    data = DataService(settings, store, audit)
    infra = InfraService(store, CollectorClient(settings.condor_config), audit, _providers(settings),
                         cache_seconds=settings.pool_cache_seconds, lost_after=settings.worker_lost_after)
    quota = QuotaService(settings, store, audit)
    service = JobService(settings, store, condor, audit, data)
    in_flight = InFlight()
    submission = JobSubmission(settings, store, condor, audit, data, service, in_flight, runtimes=infra.runtimes,
                               offers=infra.offers, reserve=quota.reserve)
    retention = Retention(settings, store, condor, data)
    ends = JobEnds()
    webhook_secrets = WebhookSecrets(store, settings.webhook_secret_overlap_seconds, settings.webhook_secret, audit)
    webhooks = WebhookDispatcher(store, settings, workers=settings.webhook_workers,
                                 on_attempt=lambda outcome: metrics.webhooks.labels(outcome).inc(),
                                 secrets=webhook_secrets)
    notifications = NotificationControl(store, service, audit, allow_private=settings.private_webhooks_allowed,
                                        on_change=webhooks.wake)

    def on_cycle(report):
        metrics.on_cycle(report)
        if report.changes:
            webhooks.wake()
        infra.check_added_workers()  # after the wake: a failure here must not delay webhooks

    tracker = Tracker(store, condor, settings.tracker_interval, data=data, in_flight=in_flight.snapshot,
                      jobs_ended=ends.jobs_ended, sweep=retention.sweep_expired,
                      recover_unsettled=submission.recover_unsettled, on_cycle=on_cycle, workers=infra.capacity,
                      orphan_grace=settings.orphan_grace_seconds,
                      reconcile_interval=settings.tracker_reconcile_interval)
    service.on_acted = tracker.watch
    return Gateway(settings, store, condor, service, tracker, webhooks,
                   TokenService(store, audit), quota, audit, infra, metrics, webhook_secrets, notifications,
                   submission, retention, ends)


def _providers(settings: Settings) -> dict:
    """Capacity providers: a local one for the managed pool, an operator's command if configured."""
    from .condor.pool import pool_address

    providers = {}
    if settings.manages_pool:
        from .infra.local_provider import LocalProvider

        providers["local"] = LocalProvider(settings)
    if settings.worker_provider_command:
        providers["command"] = CommandProvider(
            settings.worker_provider_command, f"{pool_address(settings)}:{settings.collector_port}")
    return providers


class RequestContext:
    """Gives every request an id (echoed as X-Request-Id), notes its client's address for
    the audit log, and tells browsers never to guess a content type (every answer carries
    ``X-Content-Type-Options: nosniff``)."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header("X-Request-Id")
        req.context.request_id = given if given and REQUEST_ID_RE.match(given) else str(uuid.uuid4())
        request_id_var.set(req.context.request_id)
        client_address_var.set(req.remote_addr)
        resp.set_header("X-Request-Id", req.context.request_id)
        resp.set_header("X-Content-Type-Options", "nosniff")

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded) -> None:
        resp.set_header("X-Content-Type-Options", "nosniff")  # also on answers made before process_request
        client_address_var.set(None)


def create_app(gateway: Gateway) -> falcon.App:
    app = falcon.App(middleware=[
        RequestContext(), RequestMetrics(gateway.metrics),
        Authenticate(gateway.tokens, gateway.settings.auth_enabled),
        IdempotentSubmissions(gateway.store, gateway.settings.idempotency_window_seconds, gateway.settings.home)])
    multipart = falcon.media.MultipartFormHandler()
    multipart.parse_options.max_body_part_count = 16
    # A form field (not a file) is buffered up to the same cap as a whole JSON body.
    multipart.parse_options.max_body_part_buffer_size = gateway.settings.max_body_bytes
    app.req_options.media_handlers[falcon.MEDIA_MULTIPART] = multipart
    app.req_options.media_handlers[falcon.MEDIA_JSON] = bodies.BoundedJSONHandler(gateway.settings.max_body_bytes)
    app.req_options.media_handlers[falcon.MEDIA_URLENCODED] = bodies.BoundedFormHandler(gateway.settings.max_body_bytes)
    app.req_options.strip_url_path_trailing_slash = True

    app.add_error_handler(Exception, api_errors.handle_unexpected)
    app.add_error_handler(errors.GatewayError, api_errors.GatewayErrors(gateway.audit))
    app.set_error_serializer(api_errors.serialize_http_error)

    dialects = all_dialects()
    app.add_route("/", IndexResource(dialects))
    app.add_route("/health", HealthResource(gateway.condor, webhooks={
        "signed": True, "secret": "/webhooks/secret", "operator_secret": gateway.webhook_secrets.global_secret_set}))
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
    app.add_route("/tokens", TokensResource(gateway.tokens, minting=gateway.settings.auth_enabled))
    app.add_route("/tokens/{token_id}", TokenResource(gateway.tokens))
    app.add_route("/quota", QuotaResource(gateway.quota))
    app.add_route("/webhooks/secret", WebhookSecretResource(gateway.webhook_secrets))
    app.add_route("/webhooks/secret/rotate", WebhookSecretRotateResource(gateway.webhook_secrets))
    app.add_route("/users/{user}/limits", UserLimitsResource(gateway.quota))
    app.add_route("/audit", AuditResource(gateway.audit))
    return app


def request_guard(gateway: Gateway, *, on_loopback: bool) -> RequestGuard:
    """The checks made before a request's body is read; ``on_loopback``: the bound socket is loopback."""
    settings = gateway.settings
    return RequestGuard(
        gateway.tokens, auth_enabled=settings.auth_enabled, host_names=settings.host_names,
        proxy_names=settings.proxy_names,
        check_host=on_loopback or not settings.auth_enabled,
        allowance=lambda actor: body_allowance(gateway.quota.limits_for(actor.user)["max_upload_bytes"]),
        on_refusal=lambda refusal, method, path, client, request_id: gateway.audit.refused(
            None, refusal.status, method=method, path=path, reason=refusal.message, client=client,
            request_id=request_id),
    )


def wsgi_app(gateway: Gateway, guard: RequestGuard | None = None):
    """What the server serves: the falcon app behind the guard.

    Without a ``guard``, one is made for the configured host (the server passes the one made
    from the socket it bound).
    """
    if guard is None:
        guard = request_guard(gateway, on_loopback=gateway.settings.host == "localhost"
                              or is_loopback_address(gateway.settings.host))
    return Guard(create_app(gateway), guard)
