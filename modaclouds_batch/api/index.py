"""GET /: which APIs (dialects) the gateway speaks, and where each one lives."""

from __future__ import annotations

import falcon


class IndexResource:
    def __init__(self, dialects):
        self.body = {
            "apis": [dialect.index_entry() for dialect in dialects],
            "openapi": "/openapi.json",
            "docs": "/docs",
        }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.body
