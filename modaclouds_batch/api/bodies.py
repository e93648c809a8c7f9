"""Reading JSON request bodies the same way on every route."""

from __future__ import annotations

import falcon
import json5

from ..errors import InvalidRequest, TooLarge


def json_object(req: falcon.Request) -> dict:
    """The body as a JSON object (an empty body is ``{}``), or a clear 400."""
    body = req.get_media(default_when_empty={})
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


# A lenient body carries a handful of fields; anything larger is not one.
MAX_LENIENT_BODY = 256 * 1024


def lenient_json_object(req: falcon.Request, example: str) -> dict:
    """The body as a JSON object whatever its content type (curl's --data sends
    application/x-www-form-urlencoded), read as JSON5 so trailing commas and comments pass.

    An empty body is ``{}``; anything that is not a JSON object is a 400 that shows ``example``.
    """
    raw = req.bounded_stream.read(MAX_LENIENT_BODY + 1)
    if len(raw) > MAX_LENIENT_BODY:
        raise TooLarge(f"the request body is larger than {MAX_LENIENT_BODY} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest(f"the request body is not UTF-8 text; send a JSON object such as {example}") from None
    if not text.strip():
        return {}
    try:
        body = _joined_surrogates(json5.loads(text))
    except UnicodeError:
        raise InvalidRequest("the request body holds a \\u escape of half a UTF-16 surrogate pair") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"the request body is not JSON ({exc}); send a JSON object such as {example}") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"the request body must be a JSON object such as {example}")
    return body


def _joined_surrogates(value):
    """json5 leaves a \\uD83D\\uDE00 escape as two surrogates; join them as JSON does (a lone one raises)."""
    if isinstance(value, str):
        if any("\ud800" <= c <= "\udfff" for c in value):
            return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        return value
    if isinstance(value, list):
        return [_joined_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_joined_surrogates(k): _joined_surrogates(v) for k, v in value.items()}
    return value
