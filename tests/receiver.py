"""A real HTTP webhook receiver on loopback for tests, with switchable behaviour."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """Records every POST; ``behaviour`` picks the answer: ok, error, slow, retry_after,
    redirect (302), not_found (404), gone (410), or trickle (the answer one byte every
    ``trickle_seconds``)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1"):
        self.requests: list[dict] = []
        self.behaviour = "ok"
        self.hang_seconds = 30.0
        self.trickle_seconds = 2.0
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                behaviour = receiver.behaviour_for(self.path)
                if behaviour == "slow":
                    time.sleep(receiver.hang_seconds)
                with receiver.arrived:
                    receiver.requests.append({
                        "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body, "json": json.loads(body or b"null"), "at": time.time(),
                        "behaviour": behaviour,
                    })
                    receiver.arrived.notify_all()
                if behaviour == "trickle":
                    answer = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
                    try:
                        for i in range(len(answer)):
                            self.wfile.write(answer[i:i + 1])
                            self.wfile.flush()
                            time.sleep(receiver.trickle_seconds)
                    except OSError:
                        pass  # the sender gave up: what the test wants to see
                    self.close_connection = True
                    return
                status = {"ok": 204, "error": 500, "slow": 204, "retry_after": 503, "redirect": 302,
                          "not_found": 404, "gone": 410}[behaviour]
                self.send_response(status)
                if behaviour == "retry_after":
                    self.send_header("Retry-After", "1")
                if behaviour == "redirect":
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.paths: dict[str, str] = {}
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def behaviour_for(self, path: str) -> str:
        return self.paths.get(path, self.behaviour)

    def delivered(self, path: str | None = None) -> list[dict]:
        with self.arrived:
            return [r for r in self.requests if (path is None or r["path"] == path)
                    and r["behaviour"] in ("ok", "slow")]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.delivered(path)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.delivered(path))} of {count} deliveries to {path or 'any path'} after {timeout}s")
                self.arrived.wait(min(left, 0.5))
            return self.delivered(path)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
