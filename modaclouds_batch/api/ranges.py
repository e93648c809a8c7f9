"""Answering with a file, whole or the byte range the client asked for (206 / 416)."""

from __future__ import annotations

import io
from typing import BinaryIO

import falcon


class _Bounded(io.RawIOBase):
    """At most ``length`` bytes of a file from where it stands (for 206 answers)."""

    def __init__(self, fh, length: int):
        self._fh = fh
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._left <= 0:
            return 0
        data = self._fh.read(min(len(buffer), self._left))
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._fh.close()
        super().close()


def send_file(req: falcon.Request, resp: falcon.Response, fh: BinaryIO, size: int) -> None:
    """``size`` bytes of ``fh`` as the body, or the ``Range: bytes=`` part of them.

    ``size`` is read once by the caller, so a file that grows meanwhile (a running job's
    stdout) is answered as it was then; the next range asks for the rest.
    """
    resp.accept_ranges = "bytes"
    if not (req.range and req.range_unit == "bytes"):
        resp.set_stream(fh, size)
        return
    start, end = req.range
    if start < 0:  # the last -start bytes
        start, end = max(size + start, 0), size - 1
    elif end < 0 or end >= size:
        end = size - 1
    if start >= size or start > end:
        fh.close()
        resp.set_header("Content-Range", f"bytes */{size}")
        raise falcon.HTTPRangeNotSatisfiable(size)
    fh.seek(start)
    resp.status = falcon.HTTP_206
    resp.content_range = (start, end, size)
    resp.set_stream(_Bounded(fh, end - start + 1), end - start + 1)
