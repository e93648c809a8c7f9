"""GET /jobs/events: every state change the caller may see, as Server-Sent Events.

The SSE framing is written here (a few lines): the server-side SSE packages on PyPI are
either ASGI-only (sse-starlette) or unmaintained since Python 2 (sse 1.0), and every event
this stream sends is one line of JSON, so none of the format's multi-line cases arise.
"""

from __future__ import annotations

import json
import threading
import time

import falcon

from ..errors import Busy
from ..jobs.changes import ChangeFeed, ChangeFilter, parse_after
from .jobs import status_param

# Changes read from the store per query; a backlog is sent in pages of this many.
PAGE = 500
# Seconds between two looks at the store when nothing new was there.
POLL_SECONDS = 0.5
# What EventSource clients wait before reconnecting (milliseconds), sent first.
RETRY_MS = 2000


class JobChangesResource:
    def __init__(self, feed: ChangeFeed, *, max_streams: int, heartbeat_seconds: float, max_seconds: float):
        self.feed = feed
        self.heartbeat_seconds = heartbeat_seconds
        self.max_seconds = max_seconds
        # Each open stream holds a request thread; beyond this many the next caller waits.
        self.slots = threading.BoundedSemaphore(max_streams)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        flt = ChangeFilter(job_id=req.get_param("job_id"), array_id=req.get_param("array_id"),
                           states=status_param(req), owner=req.get_param("owner"))
        checked = self.feed.check(req.context.actor, flt)
        given = req.get_header("Last-Event-ID")
        after = self.feed.start(parse_after(given if given is not None else req.get_param("last_event_id")))
        if not self.slots.acquire(blocking=False):
            raise Busy("every change stream this gateway serves is in use; reconnect in a few seconds",
                       retry_after=5)
        resp.content_type = "text/event-stream"
        resp.cache_control = ["no-cache"]
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = _Stream(self, checked, after, req.env.get("waitress.client_disconnected"))


class _Stream:
    """The answer's body: an iterable whose close() (called by the server on every ending,
    a client gone included) gives the stream's slot back, even if it never started."""

    def __init__(self, resource: JobChangesResource, checked, after: int, client_gone=None):
        self.resource = resource
        self.checked = checked
        self.after = after
        # waitress's check for a client that hung up; without it (other servers) a vanished
        # client is noticed at the next write, a keep-alive at the latest.
        self.client_gone = client_gone or (lambda: False)
        self._closed = False

    def __iter__(self):
        resource = self.resource
        yield f"retry: {RETRY_MS}\n\n".encode()
        started = last_sent = time.monotonic()
        while True:
            changes = resource.feed.after(self.checked, self.after, PAGE)
            for change in changes:
                self.after = change["id"]
                yield _event(change)
            if changes:
                last_sent = time.monotonic()
                if len(changes) == PAGE:
                    continue
            now = time.monotonic()
            if now - started >= resource.max_seconds or self.client_gone():
                return
            if now - last_sent >= resource.heartbeat_seconds:
                # A comment line: keeps proxies from closing an idle stream, and lets the server
                # notice a client that has gone.
                yield b": keep-alive\n\n"
                last_sent = now
            time.sleep(POLL_SECONDS)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.resource.slots.release()


def _event(change: dict) -> bytes:
    return f"id: {change['id']}\nevent: state\ndata: {json.dumps(change)}\n\n".encode()
