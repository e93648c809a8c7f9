"""Reading JSON request bodies the same way on every route."""

from __future__ import annotations

import falcon

from ..errors import InvalidRequest


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def json_object(req: falcon.Request) -> dict:
    """The body as a JSON object (an empty body is ``{}``), or a clear 400.

    A body sent as anything but JSON is refused (415) rather than read with defaults:
    ``curl -d '{"how": "fast"}'`` sends a form (application/x-www-form-urlencoded), and a
    route that quietly ignored it would act on what the caller did not ask for.
    """
    has_body = bool(req.content_length) or req.get_header("Transfer-Encoding") is not None
    if has_body and not _is_json(req.content_type):
        raise falcon.HTTPUnsupportedMediaType(
            description=f"send the body as JSON with Content-Type: application/json "
                        f"(got {req.content_type or 'no Content-Type'})")
    body = req.get_media(default_when_empty={})
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body
