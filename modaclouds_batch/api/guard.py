"""What a request must show before its body is read.

A ``Host`` this gateway answers to (on loopback: stops DNS rebinding), an ``Origin`` of its
own for anything but GET/HEAD/OPTIONS (stops cross-site form posts), a valid token, and a
``Content-Length`` within the caller's allowance. One check over the request line and the
headers, used twice: by :class:`Guard`, the WSGI wrapper in front of falcon (any WSGI
server, falcon.testing), and by the server the moment the headers have arrived, before
waitress reads a byte of the body (``server.py``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable, Mapping
from urllib.parse import urlsplit

from ..access.identity import LOCAL_ACTOR, Actor
from ..access.tokens import TokenService
from ..errors import Unauthorized
from .access import ACTOR_KEY, is_public

log = logging.getLogger(__name__)
# A request id a client may choose (X-Request-Id); others get a fresh one.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A request that shows no token may still carry a small body (a public route ignores it).
UNAUTHENTICATED_BODY_BYTES = 64 * 1024
# Multipart framing around the two archives of a submission.
FORM_OVERHEAD_BYTES = 1024 * 1024


def body_allowance(max_upload_bytes: int) -> int:
    """The largest body a caller allowed ``max_upload_bytes`` per file may send: two archives and the form."""
    return 2 * max_upload_bytes + FORM_OVERHEAD_BYTES


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def status_line(self) -> str:
        return f"{self.status} {HTTPStatus(self.status).phrase}"

    def body(self) -> bytes:
        return json.dumps({"error": self.message}).encode()

    @property
    def extra_headers(self) -> tuple[tuple[str, str], ...]:
        """Its own headers, and nosniff (which every answer of the gateway carries)."""
        return (NOSNIFF, *self.headers)

    def response_headers(self) -> list[tuple[str, str]]:
        return [("Content-Type", "application/json"), ("Content-Length", str(len(self.body()))), *self.extra_headers]


NOSNIFF = ("X-Content-Type-Options", "nosniff")
UNAUTHENTICATED = (("WWW-Authenticate", 'Bearer realm="modaclouds-batch"'),)
# Refusals the audit log records (the rest, 400 and 413 on a Content-Length, are malformed requests).
AUDITED_STATUSES = frozenset({401, 403})


def split_host(value: str) -> tuple[str, int | None]:
    """(name, port) of a Host header or an authority, brackets dropped, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""
    return name, int(port) if port.isdigit() else None


def host_name(value: str) -> str:
    return split_host(value)[0]


class RequestGuard:
    """The check itself; ``headers`` are named as waitress names them (``CONTENT_LENGTH``, ``HOST``)."""

    def __init__(self, tokens: TokenService, *, auth_enabled: bool, host_names: frozenset[str],
                 check_host: bool, allowance: Callable[[Actor], int], proxy_names: frozenset[str] = frozenset(),
                 on_refusal: Callable[[Refusal, str, str, str | None, str | None], None] | None = None):
        # Told of each refusal to audit: (refusal, method, path, client address, request id).
        self.on_refusal = on_refusal
        self.tokens = tokens
        self.auth_enabled = auth_enabled
        self.host_names = host_names
        self.proxy_names = proxy_names
        self.check_host = check_host
        self.allowance = allowance

    def check(self, method: str, path: str, headers: Mapping[str, str], *,
              read_only: bool) -> tuple[Refusal | None, Actor | None]:
        """(a refusal, or None and the caller: None on a public route). Reads no body.

        ``read_only`` looks the token up without recording its use (the server's early
        check, made on its event loop); the check before falcon records it.
        """
        host = host_name(headers.get("HOST", ""))
        if self.check_host and host and host not in self.host_names:
            return Refusal(403, f"this gateway does not answer to Host '{host}'; it answers to "
                                f"{', '.join(sorted(self.host_names))} (allowed_hosts adds names)"), None
        if method.upper() not in SAFE_METHODS and "ORIGIN" in headers and not self._own_origin(
                headers["ORIGIN"], headers.get("HOST", "")):
            return Refusal(403, f"a {method} from another site (Origin {headers['ORIGIN']!r}) is refused; "
                                "send it from this gateway's own pages, or without an Origin header"), None
        actor = LOCAL_ACTOR if not self.auth_enabled else None
        if self.auth_enabled and not is_public(path):
            scheme, _, token = (headers.get("AUTHORIZATION") or "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return Refusal(401, "this gateway needs an API token: send Authorization: Bearer <token>",
                               UNAUTHENTICATED), None
            try:
                check = self.tokens.verify if read_only else self.tokens.authenticate
                actor = check(token.strip())
            except Unauthorized as exc:
                return Refusal(401, exc.message, UNAUTHENTICATED), None
        refusal = self._check_length(headers.get("CONTENT_LENGTH"), actor)
        return refusal, (None if refusal else actor)

    def report(self, refusal: Refusal, method: str, path: str, client: str | None,
               headers: Mapping[str, str]) -> None:
        """Hand a refusal to the audit (401 and 403 only), with the client's X-Request-Id if it
        gave a valid one; never fails the answer."""
        if self.on_refusal is None or refusal.status not in AUDITED_STATUSES:
            return
        given = headers.get("X_REQUEST_ID") or ""
        try:
            self.on_refusal(refusal, method, path, client, given if REQUEST_ID_RE.match(given) else None)
        except Exception:  # the refusal is answered whatever happens to its record
            log.exception("could not audit a refused %s %s", method, path)

    def _own_origin(self, origin: str, host_header: str) -> bool:
        """Same origin as the request (scheme, name and port), or a proxy name the operator listed."""
        try:
            parts = urlsplit(origin.strip())
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        except ValueError:
            return False
        if not parts.hostname:  # "null": a sandboxed page or a file
            return False
        if parts.hostname in self.proxy_names:
            return True
        host, host_port = split_host(host_header)
        # The gateway itself speaks plain HTTP; TLS is a proxy's, whose name is in proxy_names.
        return parts.scheme == "http" and parts.hostname == host and port == (host_port or 80)

    def _check_length(self, raw: str | None, actor: Actor | None) -> Refusal | None:
        if raw is None or raw.strip() == "":
            return None
        if not raw.strip().isdigit():
            return Refusal(400, f"Content-Length must be a number of bytes, not {raw!r}")
        limit = self.allowance(actor) if actor is not None else UNAUTHENTICATED_BODY_BYTES
        if int(raw) > limit:
            return Refusal(413, f"a body of {int(raw)} bytes is more than the {limit} this request may send; "
                                "see max_upload_bytes in GET /quota")
        return None


class Guard:
    """WSGI wrapper: refuses what :class:`RequestGuard` refuses before the app sees the request."""

    def __init__(self, app, guard: RequestGuard):
        self.app = app
        self.guard = guard

    def __call__(self, environ, start_response):
        headers = _EnvironHeaders(environ)
        refusal, actor = self.guard.check(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO") or "/",
                                          headers, read_only=False)
        if refusal is not None:
            self.guard.report(refusal, environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO") or "/",
                              environ.get("REMOTE_ADDR"), headers)
            start_response(refusal.status_line, refusal.response_headers())
            return [refusal.body()]
        if actor is not None:
            environ[ACTOR_KEY] = actor
        return self.app(environ, start_response)


class _EnvironHeaders(Mapping):
    """A WSGI environ's headers under waitress's names (``HTTP_HOST`` -> ``HOST``)."""

    def __init__(self, environ):
        self.environ = environ

    def _key(self, name: str) -> str:
        return name if name in ("CONTENT_LENGTH", "CONTENT_TYPE") else f"HTTP_{name}"

    def __getitem__(self, name: str) -> str:
        return self.environ[self._key(name)]

    def __contains__(self, name) -> bool:
        return self._key(name) in self.environ

    def __iter__(self):
        for key in self.environ:
            if key.startswith("HTTP_"):
                yield key[5:]
            elif key in ("CONTENT_LENGTH", "CONTENT_TYPE"):
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)
