"""Run the gateway: the HTTP server on waitress plus its background threads."""

from __future__ import annotations

import logging
import signal
import sys

import waitress

from . import home
from .app import build_gateway, create_app
from .observability import configure_logging
from .settings import Settings

log = logging.getLogger(__name__)
# Multipart framing around the two archives.
FORM_OVERHEAD_BYTES = 1024 * 1024


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT. Raises home.StateBusy, before touching any state, when
    another process serves from the same home or database."""
    settings = settings.resolved()
    claim = home.claim(settings)
    configure_logging(settings.log_format)
    gateway = build_gateway(settings)
    settings = gateway.settings
    app = create_app(gateway)
    server = waitress.create_server(
        app,
        host=settings.host,
        port=settings.port,
        threads=settings.threads,
        # Waitress spools large bodies to disk, so this bounds disk, not memory.
        max_request_body_size=2 * settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
        clear_untrusted_proxy_headers=True,
        # Lets a long answer (the change stream) ask `waitress.client_disconnected` whether its
        # client is still there, instead of finding out at its next write.
        channel_request_lookahead=1,
    )

    def stop(signum, frame):
        log.info("signal %s: stopping", signum)
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    gateway.start_background()
    log.info("modaclouds-batch serving on http://%s:%s (db %s)", settings.host, settings.port, settings.db_path)
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
