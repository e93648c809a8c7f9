"""Domain errors -> HTTP, in one place; every error body is {"error": "...", ...}."""

from __future__ import annotations

import logging
import uuid

import falcon

from .. import errors

log = logging.getLogger(__name__)

STATUS_BY_ERROR = [
    (errors.PreconditionFailed, falcon.HTTP_412),
    (errors.InvalidRequest, falcon.HTTP_400),
    (errors.Unauthorized, falcon.HTTP_401),
    (errors.Forbidden, falcon.HTTP_403),
    (errors.RateLimited, falcon.HTTP_429),
    (errors.NotFound, falcon.HTTP_404),
    (errors.Gone, falcon.HTTP_410),
    (errors.Conflict, falcon.HTTP_409),
    (errors.TooLarge, falcon.HTTP_413),
    (errors.Unprocessable, falcon.HTTP_422),
    (errors.BackendRefused, falcon.HTTP_502),
    (errors.BackendUnavailable, falcon.HTTP_503),
    (errors.Busy, falcon.HTTP_503),
]


def _status_for(exc: errors.GatewayError) -> str:
    for kind, status in STATUS_BY_ERROR:
        if isinstance(exc, kind):
            return status
    return falcon.HTTP_500


# Refusals the audit log records: no valid token, not allowed, over a limit, another user's id.
AUDITED = (errors.Unauthorized, errors.Forbidden, errors.RateLimited, errors.NotYours)


class GatewayErrors:
    """The handler of domain errors: the answer, and an audit entry for a refusal."""

    def __init__(self, audit):
        self.audit = audit

    def __call__(self, req: falcon.Request, resp: falcon.Response, exc: errors.GatewayError, params) -> None:
        handle_gateway_error(req, resp, exc, params)
        if not isinstance(exc, AUDITED):
            return
        try:
            self.audit.refused(
                getattr(req.context, "actor", None), int(resp.status.split()[0]), method=req.method,
                path=req.path, reason=exc.message, target=getattr(exc, "target", None),
                request_id=getattr(req.context, "request_id", None))
        except Exception:  # the refusal is answered whatever happens to its record
            log.exception("could not audit a refused %s %s", req.method, req.path)


def handle_gateway_error(req: falcon.Request, resp: falcon.Response, exc: errors.GatewayError, params) -> None:
    resp.status = _status_for(exc)
    resp.media = {"error": exc.message, **exc.details}
    if isinstance(exc, (errors.BackendUnavailable, errors.RateLimited, errors.Busy, errors.NotYet,
                        errors.InProgress)):
        resp.set_header("Retry-After", str(exc.retry_after))
    if isinstance(exc, errors.Unauthorized):
        resp.set_header("WWW-Authenticate", 'Bearer realm="modaclouds-batch"')


def handle_unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception, params) -> None:
    if isinstance(exc, falcon.HTTPError):
        raise exc  # falcon renders it through serialize_http_error
    incident = str(uuid.uuid4())
    log.exception("unhandled error %s on %s %s", incident, req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = {"error": f"internal error; report incident {incident} to the operator", "incident": incident}


def serialize_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Falcon's own errors (404 route, 405, malformed multipart...) in our error shape."""
    message = exc.title or "error"
    if exc.description:
        message = f"{message}: {exc.description}"
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"error": message}
