"""Domain errors: raised below the HTTP layer, mapped to status codes once in api/errors.py."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class; ``message`` tells what went wrong and what to do, ``details`` adds keys."""

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(GatewayError):
    """The request itself is wrong (400)."""


class NotFound(GatewayError):
    """No such job, data object or artifact (404)."""


class NotYours(NotFound):
    """It exists but belongs to another user: answered 404 like a missing one, so ids do
    not leak, and audited as a refusal (``target`` names what was asked for)."""

    def __init__(self, message: str, *, target: str, **details):
        super().__init__(message, **details)
        self.target = target


class NotYet(NotFound):
    """Not there yet, but it will be: 404 with ``Retry-After``, so a script knows to ask again."""

    def __init__(self, message: str, retry_after: int, **details):
        super().__init__(message, **details)
        self.retry_after = retry_after


class Gone(GatewayError):
    """It existed but has expired (410)."""


class Conflict(GatewayError):
    """The request makes no sense in the current state (409)."""


class InProgress(Conflict):
    """The same request is being answered right now; ask again after ``retry_after`` seconds (409)."""

    def __init__(self, message: str, retry_after: int, **details):
        super().__init__(message, **details)
        self.retry_after = retry_after


class Unprocessable(GatewayError):
    """Well-formed, but it cannot be honoured as sent, e.g. an idempotency key reused for
    another request (422)."""


class TooLarge(GatewayError):
    """An upload or archive exceeds a configured limit (413)."""


class BackendUnavailable(GatewayError):
    """HTCondor does not answer; retry later (503)."""

    def __init__(self, message: str, retry_after: int = 10, **details):
        super().__init__(message, **details)
        self.retry_after = retry_after


class Busy(GatewayError):
    """The gateway serves as many of these as it is configured to; retry later (503)."""

    def __init__(self, message: str, retry_after: int = 5, **details):
        super().__init__(message, **details)
        self.retry_after = retry_after


class BackendRefused(GatewayError):
    """HTCondor answered but refused the request (502)."""


class Unauthorized(GatewayError):
    """No valid API token (401)."""


class Forbidden(GatewayError):
    """A valid token whose role may not do this (403)."""


class RateLimited(GatewayError):
    """Over a per-user limit; retry after ``retry_after`` seconds (429)."""

    def __init__(self, message: str, retry_after: int, **details):
        super().__init__(message, **details)
        self.retry_after = retry_after


class PreconditionFailed(Conflict):
    """A conditional request (If-Match) failed (412)."""
