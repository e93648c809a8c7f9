"""Reading JSON request bodies the same way on every route.

Every JSON body goes through ``loads`` (installed as the app's JSON media handler), so
what Python's ``json`` accepts but nothing below can store or pass on is refused here,
once, naming the field: lone UTF-16 surrogates (``"\\ud800"``, which no UTF-8 encoder
takes), non-finite numbers (``Infinity``, ``NaN``, ``1e400``) and nesting deeper than
any request needs (which would exhaust the parser's recursion). JSON and urlencoded
bodies are also capped (``max_body_bytes``): refused from their Content-Length before a
byte is read, and read no further than the cap when they come chunked.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import falcon
import falcon.media
import json5

from ..errors import InvalidRequest, TooLarge

# No request of the API nests deeper than a few levels (an array's argument lists: 3).
MAX_JSON_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(text: str) -> Any:
    """``json.loads`` that refuses, with a 400 naming the field, what the gateway cannot keep."""
    try:
        value = json.loads(text)
    except RecursionError:
        field = _field_too_deep(text)
        raise InvalidRequest(f"{field or 'the JSON body'} nests deeper than {MAX_JSON_DEPTH} levels",
                             **_named(field)) from None
    _check(value)
    return value


def _check(value: Any) -> None:
    """Walk the document without recursion; the field is the top-level key it sits under."""
    stack: list[tuple[Any, int, str | None]] = [(value, 0, None)]
    while stack:
        node, depth, field = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequest(f"{field or 'the JSON body'} nests deeper than {MAX_JSON_DEPTH} levels",
                                 **_named(field))
        if isinstance(node, str):
            _check_text(node, field)
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise InvalidRequest(f"{field or 'the JSON body'} must be a finite number "
                                     "(Infinity, NaN and numbers beyond 1e308 are not)", **_named(field))
        elif isinstance(node, dict):
            for key, child in node.items():
                name = field or _printable(key)
                _check_text(key, name)
                stack.append((child, depth + 1, name))
        elif isinstance(node, list):
            stack.extend((child, depth + 1, field) for child in node)


_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:)?|[\[\]{}]')


def _field_too_deep(text: str) -> str | None:
    """The top-level key under which the nesting passes the limit (the parser could not say)."""
    depth, key = 0, None
    for token in _TOKEN.finditer(text):
        if token.group(0)[0] == '"':
            if depth == 1 and token.group(2):
                key = token.group(1)
        elif token.group(0) in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return key
        else:
            depth -= 1
    return None


def _check_text(text: str, field: str | None) -> None:
    if _SURROGATE.search(text):
        raise InvalidRequest(f"{field or 'the JSON body'} holds a lone UTF-16 surrogate (such as \\ud800); "
                             "strings must be valid Unicode", **_named(field))


def _printable(name: str) -> str:
    """A key as it can be echoed back: a lone surrogate written as its escape."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _named(field: str | None) -> dict[str, str]:
    return {"field": field} if field else {}


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


def read_bounded(stream, content_length: int | None, limit: int) -> bytes:
    """The whole body, or a 413 once it is known to pass ``limit`` bytes (never reading past it)."""
    if content_length is not None and content_length > limit:
        raise TooLarge(f"the request body is {content_length} bytes; bodies other than file uploads are at most "
                       f"{limit} bytes (max_body_bytes)", limit=limit)
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"the request body passes {limit} bytes; bodies other than file uploads are at most "
                       f"{limit} bytes (max_body_bytes)", limit=limit)
    return data


class BoundedJSONHandler(falcon.media.JSONHandler):
    """JSON bodies through ``loads``, at most ``max_bytes`` of them."""

    def __init__(self, max_bytes: int):
        super().__init__(loads=loads)
        self.max_bytes = max_bytes

    def deserialize(self, stream, content_type, content_length):
        return self._deserialize(read_bounded(stream, content_length, self.max_bytes))


class BoundedFormHandler(falcon.media.URLEncodedFormHandler):
    """Urlencoded bodies, at most ``max_bytes`` of them."""

    def __init__(self, max_bytes: int):
        super().__init__()
        self.max_bytes = max_bytes

    def deserialize(self, stream, content_type, content_length):
        return self._deserialize(read_bounded(stream, content_length, self.max_bytes))


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
        _check(body)  # what the strict reader refuses (non-finite numbers, deep nesting) it refuses too
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
