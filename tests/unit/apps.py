"""The app as the server serves it (behind the guard), for falcon.testing."""

from __future__ import annotations

import falcon.testing

from modaclouds_batch.app import Gateway, wsgi_app


def admin_client(gateway: Gateway) -> falcon.testing.TestClient:
    """A client sending a fresh admin token on every request, as the CLI sends the local one."""
    token, _ = gateway.tokens.create("admin", "admin", label="unit tests")
    return falcon.testing.TestClient(wsgi_app(gateway), headers={"Authorization": f"Bearer {token}", "Host": "localhost:5000"})
