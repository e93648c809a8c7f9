"""Run the gateway: the HTTP server on waitress plus its background threads."""

from __future__ import annotations

import logging
import signal
import sys

import waitress
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer
from waitress.utilities import Error

from . import home
from .access.local_token import ensure_local_admin_token
from .api.guard import Refusal, RequestGuard, body_allowance
from .app import build_gateway, request_guard, wsgi_app
from .observability import configure_logging
from .settings import Settings, is_loopback_address

log = logging.getLogger(__name__)


class LoopbackRequired(SystemExit):
    """auth = false on a socket other machines can reach."""


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT. Raises home.StateBusy, before touching any state, when
    another process serves from the same home or database."""
    settings = settings.resolved()
    claim = home.claim(settings)
    configure_logging(settings.log_format)
    gateway = build_gateway(settings)
    settings = gateway.settings
    server = waitress.create_server(
        _not_yet_served,
        host=settings.host,
        port=settings.port,
        threads=settings.threads,
        # Waitress spools large bodies to disk, so this bounds disk, not memory.
        max_request_body_size=body_allowance(settings.max_upload_bytes),
        clear_untrusted_proxy_headers=True,
        # Lets a long answer (the change stream) ask `waitress.client_disconnected` whether its
        # client is still there, instead of finding out at its next write.
        channel_request_lookahead=1,
    )
    addresses = bound_addresses(server)
    on_loopback = all(is_loopback_address(address) for address in addresses)
    if not settings.auth_enabled and not on_loopback:
        server.close()
        gateway.store.close()
        log.error("auth = false is only allowed on a loopback socket; %s is reachable from other "
                  "machines: turn auth on, or serve on 127.0.0.1", ", ".join(addresses))
        raise LoopbackRequired(2)
    guard = request_guard(gateway, on_loopback=on_loopback)
    install(server, wsgi_app(gateway, guard), guard)
    if settings.auth_enabled and settings.local_admin_token:
        ensure_local_admin_token(gateway.tokens, settings.admin_token_path)
        log.info("local admin token in %s: curl -H \"Authorization: Bearer $(cat %s)\" %s/jobs",
                 settings.admin_token_path, settings.admin_token_path, settings.base_url)

    def stop(signum, frame):
        log.info("signal %s: stopping", signum)
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    gateway.start_background()
    log.info("modaclouds-batch serving on %s (auth %s, db %s)", ", ".join(addresses),
             "on" if settings.auth_enabled else "OFF: every local caller is admin", settings.db_path)
    try:
        server.run()
    except OSError as exc:  # waitress raises EBADF from its loop after close()
        if server.socket is not None and server.socket.fileno() != -1:
            raise
        log.debug("server loop ended: %s", exc)
    finally:
        gateway.shutdown()
        claim.release()
        log.info("stopped")
    sys.exit(0)


def _not_yet_served(environ, start_response):  # pragma: no cover - replaced before serving
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]


def _socket_servers(server) -> list[BaseWSGIServer]:
    """The one server, or each of a MultiSocketServer's (a host name that resolves to several)."""
    if isinstance(server, BaseWSGIServer):
        return [server]
    return [s for s in server.map.values() if isinstance(s, BaseWSGIServer)]


def bound_addresses(server) -> list[str]:
    """The addresses the server's sockets are bound to: what decides 'loopback', not the setting."""
    return [s.socket.getsockname()[0] for s in _socket_servers(server)]


def install(server, app, guard: RequestGuard) -> None:
    """Serve ``app``, and refuse what ``guard`` refuses as soon as a request's headers are in."""
    channel = guarded_channel(guard)
    for socket_server in _socket_servers(server):
        socket_server.application = app
        socket_server.channel_class = channel


class _Refused(Error):
    """A guard's refusal as waitress's error answer (sent, then the connection is closed)."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.message)
        self.refusal = refusal
        self.code = refusal.status

    def to_response(self, ident=None):
        return self.refusal.status_line, self.refusal.response_headers()[:1] + list(self.refusal.extra_headers), \
            self.refusal.body()


def guarded_channel(guard: RequestGuard) -> type[HTTPChannel]:
    """A waitress channel whose parser runs ``guard`` when the headers end and a body follows.

    Waitress reads a whole body (to disk) before it calls the app, so a WSGI wrapper alone
    would answer a 401 only after an unauthenticated 300 MB upload arrived. Here a refused
    request is complete at its headers: waitress answers it and closes the connection
    without reading the body.
    """

    class GuardedParser(HTTPRequestParser):
        def __init__(self, adj, client: str | None = None):
            super().__init__(adj)
            self.client = client

        def received(self, data):
            headers_were_in = self.headers_finished
            consumed = super().received(data)
            if self.headers_finished and not headers_were_in and not self.completed and self.error is None:
                try:
                    refusal, _ = guard.check(self.command, self.path, self.headers, read_only=True)
                except Exception:  # the event loop must go on; the request must not
                    log.exception("the early check of %s %s failed", self.command, self.path)
                    refusal = Refusal(503, "the gateway could not check this request; retry")
                if refusal is not None:
                    guard.report(refusal, self.command, self.path, self.client, self.headers)
                    self.error = _Refused(refusal)
                    self.completed = True
                    self.expect_continue = False
            return consumed

    class GuardedChannel(HTTPChannel):
        @property
        def parser_class(self):
            client = self.addr[0] if isinstance(self.addr, tuple) and self.addr else None
            return lambda adj: GuardedParser(adj, client)

    return GuardedChannel
