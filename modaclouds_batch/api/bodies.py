"""Reading JSON request bodies the same way on every route."""

from __future__ import annotations

import falcon

from ..errors import InvalidRequest


def json_object(req: falcon.Request) -> dict:
    """The body as a JSON object (an empty body is ``{}``), or a clear 400."""
    body = req.get_media(default_when_empty={})
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body
