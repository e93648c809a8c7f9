"""HTTP resources for /data: upload once, download (with ranges), replace, delete."""

from __future__ import annotations

import re

import falcon

from ..data.service import DataService
from ..errors import InvalidRequest
from .bodies import json_object
from .ranges import send_file
from .views import data_view

DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_OFFSET = 2**63 - 1  # SQLite's largest integer
# Types a data object is served with as its uploader gave them: data formats no browser
# runs as a page or a script. Anything else (text/html, image/svg+xml, JavaScript, XML...)
# is served as application/octet-stream; its metadata still shows the type it was given.
SERVED_TYPES = frozenset({
    "application/octet-stream", "application/gzip", "application/x-gzip", "application/x-tar",
    "application/zip", "application/x-bzip2", "application/x-xz", "application/zstd",
    "application/json", "application/x-ndjson", "application/pdf", "application/x-hdf5",
    "application/x-netcdf", "application/vnd.apache.parquet",
    "text/plain", "text/csv", "text/tab-separated-values",
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/tiff",
})
_CHARSET = re.compile(r"""charset\s*=\s*"?([A-Za-z0-9._-]{1,40})"?""", re.IGNORECASE)


def upload_from_request(req: falcon.Request):
    """(stream, filename, content type, ttl) of an upload: multipart 'file' part or a raw body."""
    content_type = (req.content_type or "").split(";")[0].strip().lower()
    ttl = req.get_param_as_int("ttl", min_value=1)
    if content_type == falcon.MEDIA_MULTIPART:
        for part in req.get_media():
            if part.filename is not None or part.name == "file":
                return part.stream, part.filename or part.name, part.content_type, ttl
            if part.name == "ttl":
                try:
                    ttl = int(part.text)
                except ValueError:
                    raise InvalidRequest("ttl must be a whole number of seconds", field="ttl") from None
                continue
            raise InvalidRequest(f"unexpected field '{part.name}'; send the content as a file part", field=part.name)
        raise InvalidRequest("no file in the form; send it as -F file=@path", field="file")
    return req.bounded_stream, req.get_param("filename"), req.content_type, ttl


def served_content_type(recorded: str | None) -> str:
    """The Content-Type a data object is served with: its own when on SERVED_TYPES (text
    keeps a plain charset), else application/octet-stream."""
    base, _, params = (recorded or "").partition(";")
    base = base.strip().lower()
    if base not in SERVED_TYPES:
        return "application/octet-stream"
    charset = _CHARSET.search(params) if base.startswith("text/") else None
    return f"{base}; charset={charset.group(1)}" if charset else base


def _set_entity_headers(resp: falcon.Response, row: dict) -> None:
    resp.etag = row["sha256"]
    resp.content_type = served_content_type(row["content_type"])
    resp.downloadable_as = row["filename"]
    resp.accept_ranges = "bytes"
    resp.set_header("X-Data-Sha256", row["sha256"])


class DataCollectionResource:
    def __init__(self, data: DataService, quota):
        self.data = data
        self.quota = quota

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        actor = req.context.actor
        stream, filename, content_type, ttl = upload_from_request(req)
        row = self.data.create(actor, stream, filename=filename, content_type=content_type, ttl=ttl,
                               limit=self.quota.limits_for(actor.user)["max_upload_bytes"],
                               request_id=req.context.request_id)
        resp.status = falcon.HTTP_201
        resp.location = f"/data/{row['id']}"
        resp.etag = row["sha256"]
        resp.media = data_view(row)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", min_value=1, max_value=MAX_PAGE, default=DEFAULT_PAGE)
        offset = req.get_param_as_int("offset", min_value=0, max_value=MAX_OFFSET, default=0)
        rows, total = self.data.list(req.context.actor, req.get_param("owner"), limit, offset)
        resp.set_header("X-Total-Count", str(total))
        resp.media = [data_view(r) for r in rows]


class DataObjectResource:
    def __init__(self, data: DataService, quota):
        self.data = data
        self.quota = quota

    def on_get(self, req: falcon.Request, resp: falcon.Response, data_id: str) -> None:
        row = self.data.get(req.context.actor, data_id)
        _set_entity_headers(resp, row)
        if req.if_none_match and any(tag == row["sha256"] or tag == "*" for tag in req.if_none_match):
            resp.status = falcon.HTTP_304
            return
        size = row["size"]
        send_file(req, resp, open(row["path"], "rb"), size)

    def on_head(self, req: falcon.Request, resp: falcon.Response, data_id: str) -> None:
        row = self.data.get(req.context.actor, data_id)
        _set_entity_headers(resp, row)
        resp.content_length = row["size"]

    def on_put(self, req: falcon.Request, resp: falcon.Response, data_id: str) -> None:
        actor = req.context.actor
        stream, filename, content_type, _ = upload_from_request(req)
        if_match = req.if_match[0] if req.if_match else None
        row = self.data.replace(
            actor, data_id, stream, if_match=str(if_match) if if_match else None,
            content_type=content_type if content_type != falcon.MEDIA_MULTIPART else None,
            filename=filename, limit=self.quota.limits_for(actor.user)["max_upload_bytes"],
            request_id=req.context.request_id)
        resp.etag = row["sha256"]
        resp.media = data_view(row)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, data_id: str) -> None:
        self.data.delete(req.context.actor, data_id, req.context.request_id)
        resp.status = falcon.HTTP_204


class DataMetadataResource:
    def __init__(self, data: DataService):
        self.data = data

    def on_get(self, req: falcon.Request, resp: falcon.Response, data_id: str) -> None:
        resp.media = data_view(self.data.get(req.context.actor, data_id))

    def on_patch(self, req: falcon.Request, resp: falcon.Response, data_id: str) -> None:
        """``{"ttl": seconds}`` or ``{"ttl": null}`` (keep): the only metadata one changes."""
        if (req.content_type or "").split(";")[0].strip().lower() != falcon.MEDIA_JSON:
            raise falcon.HTTPUnsupportedMediaType(
                description="PATCH /data/{id}/metadata takes application/json: {\"ttl\": seconds} or {\"ttl\": null}")
        body = json_object(req)
        unknown = sorted(set(body) - {"ttl"})
        if unknown or "ttl" not in body:
            raise InvalidRequest(f"send {{\"ttl\": seconds}} or {{\"ttl\": null}}; unexpected keys {unknown}"
                                 if unknown else "send {\"ttl\": seconds} or {\"ttl\": null}", field="ttl")
        resp.media = data_view(self.data.set_ttl(req.context.actor, data_id, body["ttl"],
                                                 request_id=req.context.request_id))
