"""Seed 004, the MODAClouds batch API: the gateway's core dialect, at the root.

Its resources live in ``api/`` (it is the house's own vocabulary, described in
``api/openapi.json``); this module only says which routes it serves, as every door does.
"""

from __future__ import annotations

from ..api.changes import JobChangesResource
from ..api.data import DataCollectionResource, DataMetadataResource, DataObjectResource
from ..api.jobs import (
    ArrayResource,
    ArtifactResource,
    JobActionResource,
    JobEventsResource,
    JobResource,
    JobsResource,
    NotificationCancelResource,
    NotificationResendResource,
    NotificationResource,
    NotificationsResource,
)
from ..jobs.changes import ChangeFeed
from ..jobs.states import JobState
from . import Dialect, submission_hook


def register(app, gateway) -> None:
    service = gateway.service
    on_submitted = submission_hook(gateway)
    app.add_route("/jobs", JobsResource(service, gateway.submission, gateway.quota, on_submitted=on_submitted))
    settings = gateway.settings
    app.add_route("/jobs/events", JobChangesResource(
        ChangeFeed(gateway.store, service), max_streams=settings.max_event_streams,
        heartbeat_seconds=settings.event_stream_heartbeat_seconds,
        max_seconds=settings.event_stream_max_seconds))
    app.add_route("/jobs/{job_id}", JobResource(service, gateway.notifications))
    app.add_route("/jobs/{job_id}/events", JobEventsResource(service))
    app.add_route("/jobs/{job_id}/artifacts/{name}", ArtifactResource(service))
    app.add_route("/jobs/{job_id}/notifications", NotificationsResource(service))
    app.add_route("/jobs/{job_id}/notifications/{event_id}", NotificationResource(service, gateway.notifications))
    app.add_route("/jobs/{job_id}/notifications/{event_id}/cancel", NotificationCancelResource(gateway.notifications))
    app.add_route("/jobs/{job_id}/notifications/{event_id}/resend",
                  NotificationResendResource(service, on_resend=gateway.webhooks.wake))
    app.add_route("/jobs/{job_id}/{action}", JobActionResource(service))
    app.add_route("/arrays/{array_id}", ArrayResource(service))
    app.add_route("/data", DataCollectionResource(service.data, gateway.quota))
    app.add_route("/data/{data_id}", DataObjectResource(service.data, gateway.quota))
    app.add_route("/data/{data_id}/metadata", DataMetadataResource(service.data))


DIALECT = Dialect(
    name="MODAClouds batch API",
    seed="004",
    base="/",
    docs="docs/api.md",
    register=register,
    # The core vocabulary is this dialect's own.
    states={state: state.value for state in JobState},
)
