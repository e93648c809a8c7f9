"""Turn a POST /jobs body (multipart, urlencoded or JSON) into a SubmitRequest.

Form fields keep the original API's names (``job-*``); JSON takes the same names or the
short ones of seed 001 (``command``, ``binary``, ``input_files``, ``ttl``).
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

import falcon

from ..errors import InvalidRequest
from ..jobs.submission import Staging, SubmitRequest

FILE_FIELDS = {"job-bundle", "job-input"}
# Form field -> SubmitRequest attribute.
FORM_FIELDS = {
    "job-name": "name",
    "job-arguments": "arguments",
    "job-notification": "notification_url",
    "job-notification-events": "notification_events",
    "job-bundle-id": "bundle_id",
    "job-input-ids": "input_ids",
    "job-ttl": "ttl",
    "job-array": "array",
    "job-count": "count",
    "job-runtime": "runtime",
    "job-runtime-wait": "runtime_wait",
    "job-cpus": "cpus",
    "job-memory": "memory",
    "job-disk": "disk",
    "job-time-limit": "time_limit",
    "job-resources-wait": "resources_wait",
    "job-after": "after",
    "job-after-any": "after_any",
}
# Form fields that may be repeated (or hold several ids separated by commas or spaces).
LIST_FIELDS = {"job-input-ids", "job-after", "job-after-any"}
# JSON key -> SubmitRequest attribute (form names are accepted in JSON too).
JSON_FIELDS = {
    **FORM_FIELDS,
    "name": "name",
    "arguments": "arguments",
    "notification": "notification_url",
    "notification_events": "notification_events",
    "bundle_id": "bundle_id",
    "input_ids": "input_ids",
    "command": "command",
    "binary": "binary_id",
    "input_files": "input_file_ids",
    "ttl": "ttl",
    "array": "array",
    "count": "count",
    "runtime": "runtime",
    "runtime_wait": "runtime_wait",
    "cpus": "cpus",
    "memory": "memory",
    "disk": "disk",
    "time_limit": "time_limit",
    "resources_wait": "resources_wait",
    "after": "after",
    "after_any": "after_any",
}
NOTIFICATION_EVENTS = ("final", "all")
_ID_SPLIT = re.compile(r"[,\s]+")


def submission_from_request(req: falcon.Request, staging: Staging, actor) -> SubmitRequest:
    content_type = (req.content_type or "").split(";")[0].strip().lower()
    if content_type == falcon.MEDIA_MULTIPART:
        values = _multipart(req, staging)
    elif content_type == falcon.MEDIA_URLENCODED:
        values = _urlencoded(req, staging)
    elif content_type == falcon.MEDIA_JSON:
        values = _json(req)
    else:
        raise falcon.HTTPUnsupportedMediaType(
            description="POST /jobs takes multipart/form-data (files), application/json (data ids or a "
            "command) or application/x-www-form-urlencoded (job-bundle as the text of one script)"
        )
    return _build(values, actor, req.context.request_id)


def _build(values: dict[str, Any], actor, request_id: str | None) -> SubmitRequest:
    events = values.get("notification_events") or "final"
    if events not in NOTIFICATION_EVENTS:
        raise InvalidRequest("job-notification-events must be 'final' (default) or 'all'",
                             field="job-notification-events")
    return SubmitRequest(
        actor=actor,
        name=_text(values, "name"),
        arguments=_arguments(values.get("arguments")),
        notification_url=_text(values, "notification_url"),
        notification_events=events,
        request_id=request_id,
        bundle_id=_text(values, "bundle_id"),
        input_ids=_ids(values.get("input_ids"), "job-input-ids"),
        command=_text(values, "command"),
        binary_id=_text(values, "binary_id"),
        input_file_ids=_ids(values.get("input_file_ids"), "input_files"),
        ttl=values.get("ttl"),
        array=_array(values.get("array")),
        count=_count(values.get("count")),
        runtime=_text(values, "runtime"),
        runtime_wait=_flag(values.get("runtime_wait"), "job-runtime-wait"),
        cpus=values.get("cpus"),
        memory=values.get("memory"),
        disk=values.get("disk"),
        time_limit=values.get("time_limit"),
        resources_wait=_flag(values.get("resources_wait"), "job-resources-wait"),
        after=_ids(values.get("after"), "after", "job ids"),
        after_any=_ids(values.get("after_any"), "after_any", "job ids"),
    )


def _flag(value: Any, field: str) -> bool:
    if value in (None, "", False, "false", "0", "no"):
        return False
    if value in (True, "true", "1", "yes"):
        return True
    raise InvalidRequest(f"{field} must be true or false", field=field)


def _text(values: dict[str, Any], key: str) -> str | None:
    value = values.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a string", field=key)
    return value


def _arguments(value: Any) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidRequest("arguments must be a string (split like a shell would) or a list of strings",
                         field="job-arguments")


def _ids(value: Any, field: str, what: str = "data ids") -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [v for v in _ID_SPLIT.split(value) if v]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidRequest(f"{field} must be a list of {what}", field=field)


def _array(value: Any) -> list | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InvalidRequest("job-array must be a JSON list of argument strings (or lists)",
                                 field="job-array") from None
    if not isinstance(value, list) or not all(
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(w, str) for w in v)) for v in value):
        raise InvalidRequest("job-array must be a list whose items are argument strings or lists of strings",
                             field="job-array")
    return value


def _count(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        count = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
        raise InvalidRequest("job-count must be a whole number", field="job-count") from None
    if isinstance(value, bool) or str(count) != str(value).strip():
        raise InvalidRequest("job-count must be a whole number", field="job-count")
    return count


def _unknown(name: str, known) -> InvalidRequest:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return InvalidRequest(f"unknown field '{name}'; {hint}POST /jobs takes {', '.join(sorted(known))}", field=name)


def _multipart(req: falcon.Request, staging: Staging) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for part in req.get_media():
        name = part.name
        if name in FILE_FIELDS:
            if part.filename is None and name == "job-bundle":
                # `-F job-bundle=<script.sh` sends the script as a plain field.
                staging.receive_script(part.text)
            else:
                staging.receive(name, part.stream, part.filename)
        elif name in LIST_FIELDS and FORM_FIELDS[name] in values:
            values[FORM_FIELDS[name]] += " " + part.text  # repeated field
        elif name in FORM_FIELDS:
            values[FORM_FIELDS[name]] = part.text
        else:
            raise _unknown(name, FORM_FIELDS.keys() | FILE_FIELDS)
    return values


def _urlencoded(req: falcon.Request, staging: Staging) -> dict[str, Any]:
    form = req.get_media()
    values: dict[str, Any] = {}
    for name, value in form.items():
        if name == "job-input":
            raise InvalidRequest("job-input must be uploaded as a file with multipart/form-data", field=name)
        if isinstance(value, list) and name not in LIST_FIELDS:
            raise InvalidRequest(f"{name} given twice", field=name)
        if name == "job-bundle":
            if value:
                staging.receive_script(value)
        elif name in FORM_FIELDS:
            values[FORM_FIELDS[name]] = " ".join(value) if isinstance(value, list) else value
        else:
            raise _unknown(name, FORM_FIELDS.keys() | FILE_FIELDS)
    return values


def _json(req: falcon.Request) -> dict[str, Any]:
    body = req.get_media(default_when_empty=None)
    if not isinstance(body, dict):
        raise InvalidRequest("the JSON body must be an object, e.g. {\"command\": \"uname -a\"}")
    return _json_values(body)


def _json_values(body: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key not in JSON_FIELDS:
            raise _unknown(key, JSON_FIELDS.keys())
        values[JSON_FIELDS[key]] = value
    return values


def submission_from_json(body: dict[str, Any], actor, request_id: str | None) -> SubmitRequest:
    """A JSON object already read (by any door) into a SubmitRequest, with POST /jobs' checks."""
    return _build(_json_values(body), actor, request_id)
