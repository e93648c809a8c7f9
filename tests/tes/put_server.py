"""A local HTTP server that keeps what it is PUT (and serves what it holds), for TES outputs."""

from __future__ import annotations

import http.server
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def put_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yields (base URL, {path: body} of every PUT); a PUT under /refuse/ is answered 403."""
    received: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.startswith("/refuse/"):
                self.send_response(403)
            else:
                received[self.path] = body
                self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
