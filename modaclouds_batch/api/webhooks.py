"""HTTP resources for the caller's own webhook signing secret: read it, rotate it."""

from __future__ import annotations

import falcon

from ..notify.signing import WebhookSecrets


class WebhookSecretResource:
    """GET /webhooks/secret: the caller's secret (made on first read); never anyone else's."""

    def __init__(self, secrets: WebhookSecrets):
        self.secrets = secrets

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.cache_control = ["no-store"]
        resp.media = self.secrets.current(req.context.actor)


class WebhookSecretRotateResource:
    """POST /webhooks/secret/rotate: a new secret; the old one signs on for the overlap."""

    def __init__(self, secrets: WebhookSecrets):
        self.secrets = secrets

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.cache_control = ["no-store"]
        resp.media = self.secrets.rotate(req.context.actor, req.context.request_id)
