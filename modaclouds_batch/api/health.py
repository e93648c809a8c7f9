"""GET /health: the gateway's version and whether HTCondor answers."""

from __future__ import annotations

import falcon

from .. import __version__


class HealthResource:
    def __init__(self, condor, webhooks: dict | None = None):
        self.condor = condor
        # How notifications are signed (so a receiver's owner knows what to verify with).
        self.webhooks = webhooks

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks = self.condor.ping()
        healthy = all(check["ok"] for check in checks.values())
        resp.status = falcon.HTTP_200 if healthy else falcon.HTTP_503
        resp.media = {"status": "ok" if healthy else "degraded", "version": __version__, **checks,
                      **({"webhooks": self.webhooks} if self.webhooks else {})}
