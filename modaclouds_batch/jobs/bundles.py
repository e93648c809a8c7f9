"""Uploaded archives are hostile until proven otherwise.

The gateway never unpacks them: it reads each one once, as a stream, and refuses
anything an unpacker could be tricked with (absolute or ``..`` paths, links leaving the
archive, device files, setuid bits) or that inflates past the limits (decompression
bombs: the bytes actually inflated are counted, not the sizes the headers claim).
The launcher unpacks a validated archive on the execute node.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

READ_CHUNK = 1024 * 1024
RUN_SH = "run.sh"


class ArchiveRejected(Exception):
    """Why an archive was refused; ``too_large`` marks limit violations (413, not 400)."""

    def __init__(self, reason: str, *, field: str, too_large: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.too_large = too_large


@dataclass(frozen=True)
class ArchiveLimits:
    max_unpacked_bytes: int = 4 << 30
    max_members: int = 10_000


@dataclass(frozen=True)
class ArchiveSummary:
    members: int
    unpacked_bytes: int
    has_run_sh: bool


class _CountingReader(io.RawIOBase):
    """Inflates a gzip file and stops reading once more than ``limit`` bytes came out."""

    def __init__(self, path: Path, limit: int, field: str):
        self._gzip = gzip.open(path, "rb")
        self._limit = limit
        self._field = field
        self.inflated = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._gzip.read(len(buffer))
        self.inflated += len(data)
        if self.inflated > self._limit:
            raise ArchiveRejected(
                f"{self._field} inflates to more than the {self._limit}-byte limit; "
                "split the data or ask the operator to raise max_unpacked_bytes",
                field=self._field, too_large=True,
            )
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._gzip.close()
        super().close()


def _normalise(name: str, field: str) -> str:
    """The member's path relative to the archive root, or a refusal naming it."""
    if "\0" in name or "\\" in name:
        raise ArchiveRejected(f"{field}: member {name!r} has a NUL or backslash in its name", field=field)
    if name.startswith("/"):
        raise ArchiveRejected(f"{field}: member {name!r} has an absolute path; paths must be relative", field=field)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveRejected(f"{field}: member {name!r} contains '..'; paths must stay inside the archive", field=field)
    return "/".join(parts)


def _link_stays_inside(member_path: str, target: str) -> bool:
    if target.startswith("/"):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member_path), target))
    return not (resolved == ".." or resolved.startswith("../"))


def validate_archive(path: Path, *, field: str, limits: ArchiveLimits, require_run_sh: bool) -> ArchiveSummary:
    """Read the whole archive once and refuse it at the first problem."""
    reader = _CountingReader(Path(path), limits.max_unpacked_bytes, field)
    members = 0
    declared = 0
    has_run_sh = False
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BufferedReader(reader, READ_CHUNK), mode="r|") as tar:
            for member in tar:
                members += 1
                if members > limits.max_members:
                    raise ArchiveRejected(
                        f"{field} has more than the {limits.max_members}-member limit", field=field, too_large=True
                    )
                name = _normalise(member.name, field)
                if member.isdev() or member.isfifo():
                    raise ArchiveRejected(
                        f"{field}: member {member.name!r} is a device or fifo; only files, folders and links are allowed",
                        field=field,
                    )
                if member.issym() and not _link_stays_inside(name, member.linkname):
                    raise ArchiveRejected(
                        f"{field}: symlink {member.name!r} points outside the archive ({member.linkname!r})", field=field
                    )
                if member.islnk():
                    target = _normalise(member.linkname, field)
                    if target not in seen:
                        raise ArchiveRejected(
                            f"{field}: hard link {member.name!r} points to {member.linkname!r}, which is not an earlier member",
                            field=field,
                        )
                if member.mode & 0o6000:
                    raise ArchiveRejected(f"{field}: member {member.name!r} is setuid or setgid", field=field)
                declared += member.size
                if declared > limits.max_unpacked_bytes:
                    raise ArchiveRejected(
                        f"{field} declares more than the {limits.max_unpacked_bytes}-byte unpacked limit",
                        field=field, too_large=True,
                    )
                if name == RUN_SH:
                    if not member.isfile():
                        raise ArchiveRejected(f"{field}: run.sh must be a regular file, not a link or folder", field=field)
                    has_run_sh = True
                seen.add(name)
    except ArchiveRejected:
        raise
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise ArchiveRejected(f"{field} is not a gzip-compressed tar archive (.tar.gz): {exc}", field=field) from None
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveRejected(f"{field} is gzip but not a readable tar archive: {exc}", field=field) from None
    finally:
        reader.close()
    if members == 0:
        raise ArchiveRejected(f"{field} is an empty archive", field=field)
    if require_run_sh and not has_run_sh:
        raise ArchiveRejected(f"{field} has no run.sh at its root; the bundle's entry point must be ./run.sh", field=field)
    return ArchiveSummary(members, reader.inflated, has_run_sh)


def write_script_bundle(script_text: str, dest: Path) -> None:
    """The original API's form: one script's text becomes ``run.sh`` (mode 0755).

    A script without a ``#!`` line is run by the launcher with /bin/sh.
    """
    data = script_text.replace("\r\n", "\n").encode()
    info = tarfile.TarInfo(RUN_SH)
    info.size = len(data)
    info.mode = 0o755
    with tarfile.open(dest, "w:gz") as tar:
        tar.addfile(info, io.BytesIO(data))


def pack_directory(src: Path, dest: Path) -> None:
    """A bundle from a folder whose root holds run.sh (used by clients)."""
    src = Path(src)
    if not (src / RUN_SH).is_file():
        raise ArchiveRejected(f"{src} has no run.sh at its root", field="job-bundle")
    with tarfile.open(dest, "w:gz") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
