"""Job archives (bundles and inputs): validate them without unpacking; build bundles.

Uploaded archives are hostile until proven otherwise. The gateway never unpacks them:
they travel to the execute node, where the launcher (``condor/launcher.sh``) unpacks them
with GNU tar. So the gateway reads each archive once, as a stream, and refuses anything
that GNU tar could be tricked with or that Python's ``tarfile`` and GNU tar might read
differently. Nothing is written to disk while validating, and memory stays bounded
whatever the archive holds.

The rules, and why each exists:

- Names: no absolute paths, no ``..`` component, no NUL, backslash or control
  characters, not empty, at most 4096 bytes (255 a component): anything else could
  land outside the job's directory, or be read differently by another tar.
- Member types: regular files, directories, symlinks and hard links only. Devices,
  fifos and GNU extensions (sparse files, volume labels, dump directories...) are
  refused: a job has no use for them and each is a place where unpackers disagree.
- Links: a symlink must resolve inside the archive, following the archive's own
  symlinks (``x/b -> ..`` then ``q -> x/b/..`` escapes although each looks harmless).
  A hard link must name a regular file that came earlier. No member may sit below a
  symlink or a file (``l -> sub`` then ``l/f``), and a name may appear once (folders
  excepted): GNU tar would otherwise write through links or replace what was checked.
- One tree for a job: the launcher unpacks the bundle, then each input, into one folder,
  so they are validated as one tree in that order (:func:`validate_archives`). A later
  archive may replace an earlier one's file or link by a file or link (input files win
  a name clash), but no member may lie below an earlier archive's link or file, a
  folder may not replace a link or file (tar would keep the link and write through it)
  nor a file or link a folder, and every link must stay inside through all the links
  unpacked so far: a link planted by one archive cannot be followed by the next.
- Structure: the archive must end with tar's end-of-archive block followed only by
  zero bytes. ``tarfile`` stops at the first zero block (and quietly at a corrupt
  header), GNU tar warns "A lone zero block" and stops, ``tar -i`` and other tars read
  on: members hidden past that block are refused rather than left unchecked.
- Setuid, setgid and sticky bits are *stripped* (by the launcher, which unpacks with
  ``--no-same-permissions`` and then clears them), not refused: folders packed from a
  shared project directory often carry setgid, and refusing those would help nobody.
  Python's own ``tarfile`` "data" filter makes the same choice. The summary counts them.
- Limits (decompression bombs): the member count, the sum of the sizes the headers
  declare (checked before any data is read, so a header claiming a terabyte is refused
  at once), and the bytes the gzip stream *really* inflates to, counted as they come
  out, so a small upload that inflates to zeros past the end of the tar, or to huge
  pax headers, is stopped as soon as it passes the limit. Sparse members (whose
  declared size is not what they occupy on the wire) are refused outright.

Why not ``tarfile.open(mode="r|gz")``: its stream layer reads ahead into a private
buffer, so neither the bytes really inflated nor the bytes following the end-of-archive
block can be seen. Here gzip is inflated by :class:`_InflatingReader`, which counts
every byte and only ever moves forward; ``tarfile`` parses the headers on top of it.
"""

from __future__ import annotations

import gzip
import io
import os
import shlex
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

RUN_SH = "run.sh"
# Enough of run.sh to see its first line (a #! line is far shorter).
RUN_SH_HEAD_BYTES = 4096
BLOCK = tarfile.BLOCKSIZE
READ_CHUNK = 1024 * 1024
# A pax extended header or GNU long name/link bigger than this is refused before it is
# read: tarfile holds them in memory, and real ones are a few hundred bytes (macOS
# extended attributes can reach some kilobytes).
MAX_METADATA_BYTES = 1024 * 1024
# What the execute node's filesystem accepts (Linux PATH_MAX and NAME_MAX).
MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
# Like the kernel's ELOOP limit: following more symlinks than this is a loop.
MAX_SYMLINK_HOPS = 40
# Tar's own bookkeeping inflated per member (header, long name or pax header, padding),
# allowed on top of max_unpacked_bytes before the stream counts as a bomb.
OVERHEAD_PER_MEMBER = 4 * BLOCK
OVERHEAD_SLACK = 1024 * 1024

_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_ALLOWED_TYPES = _FILE_TYPES + (tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)
_SPECIAL_TYPES = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo (named pipe)",
}
# Global pax keywords that would change how the following members are read.
_GLOBAL_KEYWORDS_REFUSED = ("path", "linkpath", "size", "GNU.sparse.")
_HINTS = {
    b"PK\x03\x04": "it looks like a zip file",
    b"BZh": "it looks like bzip2 (.tar.bz2)",
    b"\xfd7zXZ\x00": "it looks like xz (.tar.xz)",
    b"\x28\xb5\x2f\xfd": "it looks like zstd (.tar.zst)",
}
_HOW_TO_PACK = "create it with: tar czf bundle.tar.gz -C your-folder ."


class ArchiveRejected(Exception):
    """Why an archive was refused.

    ``reason`` names the form field, the problem and the offending member, and says what
    to do; ``too_large`` marks limit violations (the HTTP layer answers 413 for those,
    400 for the rest); ``field`` is the form field that carried the archive.
    """

    def __init__(self, reason: str, *, field: str, too_large: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.too_large = too_large


@dataclass(frozen=True)
class ArchiveLimits:
    """How much an archive may hold. The gateway passes its settings; tests pass small ones."""

    # What the members may add up to once unpacked (the execute node's disk).
    max_unpacked_bytes: int = 4 << 30
    max_members: int = 10_000
    # The setting a refusal tells the operator to raise.
    setting: str = "max_unpacked_bytes"

    def __post_init__(self):
        if self.max_unpacked_bytes < 0 or self.max_members < 0:
            raise ValueError("archive limits must not be negative")

    @property
    def max_inflated_bytes(self) -> int:
        """What the gzip stream may inflate to in all: the members plus tar's bookkeeping."""
        return self.max_unpacked_bytes + self.max_members * OVERHEAD_PER_MEMBER + OVERHEAD_SLACK


@dataclass(frozen=True)
class ArchiveSummary:
    """What a valid archive holds, for logs and for clients that pack bundles."""

    members: int
    # Sum of the regular files' sizes: what unpacking writes.
    unpacked_bytes: int
    # Bytes the gzip stream inflated to (members, headers, padding).
    inflated_bytes: int
    has_run_sh: bool
    run_sh_executable: bool
    # Members carrying setuid, setgid or sticky bits, which the launcher strips.
    special_bits_stripped: int
    # Symlink members (archives without any cannot change where another's members land).
    symlinks: int = 0


@dataclass(frozen=True)
class ArchiveSource:
    """One archive of a job, in the order the launcher unpacks them."""

    path: Path
    field: str
    require_run_sh: bool = False
    # Its own limits (a bundle's are lower than an input's); None: those of the call.
    limits: ArchiveLimits | None = None


class _Refused(Exception):
    """Raised deep inside parsing; ``validate_archive`` adds the field name."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.message = message
        self.too_large = too_large


def _show(name: str) -> str:
    """A member name fit for a message: quoted, escaped, and not endless."""
    text = repr(name)
    return text if len(text) <= 160 else text[:150] + "...'"


def _mib(n: int) -> str:
    return f"{n} bytes ({n / (1 << 20):.1f} MiB)"


class _InflatingReader:
    """The inflated bytes of a gzip file, read forward only, counted against a budget.

    ``tarfile`` reads headers from it and "seeks" over member data, which inflates and
    discards that data in bounded chunks: a member's data is never held in memory.
    """

    def __init__(self, path: Path, budget: int, setting: str = "max_unpacked_bytes"):
        self._gzip = gzip.GzipFile(filename=path, mode="rb")
        self._budget = budget
        self._setting = setting
        self.position = 0
        self.last_read = b""

    def close(self) -> None:
        self._gzip.close()

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise ValueError("archive reads must be bounded")
        data = self._gzip.read(size)
        self.position += len(data)
        self.last_read = data
        if self.position > self._budget:
            raise _Refused(
                f"inflates to more than {_mib(self._budget)}, the limit for an archive "
                f"(a decompression bomb?); split the data, or ask the operator to raise {self._setting}",
                too_large=True,
            )
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or offset < self.position:
            raise _Refused("has a header that points backwards in the archive")
        while self.position < offset:
            if not self.read(min(READ_CHUNK, offset - self.position)):
                break
        return self.position

    def drain(self, on_chunk: Callable[[bytes], None]) -> None:
        """Inflate the rest of the stream (still counted), handing each chunk over."""
        while chunk := self.read(READ_CHUNK):
            on_chunk(chunk)


class _CheckedTarInfo(tarfile.TarInfo):
    """tarfile's header parsing, with the two places it would trust a size guarded.

    tarfile reads pax headers and GNU long names whole into memory, and parses sparse
    maps into lists as long as the archive says: both are checked before tarfile acts.
    These hooks are tarfile internals (stable since Python 3.2); the unit tests for
    oversized pax headers and for each sparse format fail if a new Python bypasses them.
    """

    def _proc_member(self, tarfile_):
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _Refused(f"has a sparse member {_show(self.name)}; {_NO_SPARSE}")
        metadata = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                    tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
        if self.type in metadata and not 0 <= self.size <= MAX_METADATA_BYTES:
            raise _Refused(
                f"has a {self.size}-byte extended header (long name or pax attributes) near "
                f"byte {self.offset}; at most {MAX_METADATA_BYTES} bytes are accepted",
                too_large=True,
            )
        return super()._proc_member(tarfile_)

    def _refuse_pax_sparse(self, *args):
        raise _Refused(f"has a sparse member (GNU pax sparse format); {_NO_SPARSE}")

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_pax_sparse


_NO_SPARSE = "re-create the archive without --sparse (-S)"


class _Tree:
    """The paths the archive creates, as a tree of components: what is where, once.

    Memory grows with the total length of the names, which the member limit bounds.
    """

    ROOT = 0

    def __init__(self):
        self._children: dict[tuple[int, str], int] = {}
        self.kind: list[str] = ["dir"]  # "dir", "implied-dir", "file", "symlink"
        self.mode: list[int] = [0]
        # Which archive (an index into ``fields``) made each node.
        self.layer: list[int] = [-1]
        self.fields: list[str] = []
        # node -> (member name as shown, its path components, its target)
        self.symlinks: dict[int, tuple[str, list[str], str]] = {}

    def begin(self, field: str) -> None:
        """The following members come from the next archive unpacked into the same folder."""
        self.fields.append(field)

    @property
    def current(self) -> int:
        return len(self.fields) - 1

    def made_by(self, node: int) -> str:
        """'' for a node of the archive being read, else ' (from job-bundle)'."""
        layer = self.layer[node]
        return "" if layer in (self.current, -1) else f" (from {self.fields[layer]})"

    def lookup(self, parts: list[str]) -> int | None:
        node = self.ROOT
        for part in parts:
            node = self._children.get((node, part))
            if node is None:
                return None
        return node

    def add(self, parts: list[str], kind: str, mode: int, shown: str) -> int:
        """Record a member; refuse duplicates and members below a link or a file."""
        node = self.ROOT
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            child = self._children.get((node, part))
            if child is None:
                child = len(self.kind)
                self._children[(node, part)] = child
                self.kind.append(kind if last else "implied-dir")
                self.mode.append(mode if last else 0)
                self.layer.append(self.current)
            elif not last and self.kind[child] not in ("dir", "implied-dir"):
                above = "/".join(parts[: depth + 1])
                raise _Refused(
                    f"member {shown} lies below {_show(above)}, which is a "
                    f"{self.kind[child]}{self.made_by(child)}: unpacking would write through it"
                )
            elif last and self.layer[child] != self.current:
                self._replace(child, kind, mode, shown)
            elif last:
                if kind == "dir" and self.kind[child] in ("dir", "implied-dir"):
                    self.kind[child] = "dir"
                elif self.kind[child] == "implied-dir":
                    raise _Refused(
                        f"member {shown} is a {kind}, but earlier members were unpacked "
                        "below it as a folder"
                    )
                else:
                    raise _Refused(
                        f"member {shown} appears twice; each path may appear once "
                        "(was the archive appended to?)"
                    )
            node = child
        return node

    def _replace(self, node: int, kind: str, mode: int, shown: str) -> None:
        """A member over what an earlier archive unpacked at the same path."""
        was = self.kind[node]
        folders = ("dir", "implied-dir")
        if kind == "dir" and was in folders:
            self.kind[node] = "dir"
            return
        if kind == "dir" or was in folders:
            what = "a folder" if kind == "dir" else f"a {kind}"
            raise _Refused(
                f"member {shown} is {what}, but it is a {'folder' if was in folders else was}"
                f"{self.made_by(node)}: unpacking would "
                + ("keep that and write through it" if kind == "dir" else "have to replace a folder")
            )
        # A file or link over a file or link: tar removes the old one first (input files win).
        self.symlinks.pop(node, None)
        self.kind[node] = kind
        self.mode[node] = mode
        self.layer[node] = self.current

    def escapes(self, link_node: int, link_parts: list[str], target: str) -> str | None:
        """Resolve a symlink through the archive's own symlinks; say why it escapes, or None."""
        queue = target.split("/")[::-1]  # a stack: next component last
        stack: list[int | None] = []  # the folders walked so far; None: not in the archive
        node: int | None = self.ROOT
        for part in link_parts[:-1]:
            node = self._children.get((node, part)) if node is not None else None
            stack.append(node)
        hops = 0
        while queue:
            part = queue.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    return "resolves outside the archive"
                stack.pop()
                continue
            parent = stack[-1] if stack else self.ROOT
            node = None if parent is None else self._children.get((parent, part))
            if node is not None and node in self.symlinks:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    return "is part of a symlink loop"
                shown, _, next_target = self.symlinks[node]
                if next_target.startswith("/"):
                    return f"goes through {shown}, which is absolute"
                queue.extend(next_target.split("/")[::-1])
                continue
            stack.append(node)
        return None


def _split_name(raw: str, what: str, shown: str) -> list[str]:
    """A member name or link target as path components below the archive root.

    ``.`` and empty components are dropped (``./a//b`` is ``a/b``); the root itself is
    ``[]``. Anything that could leave the root, or that another tar might read
    differently, is refused.
    """
    if "\0" in raw:
        raise _Refused(f"{what} {shown} contains a NUL character")
    if "\\" in raw:
        raise _Refused(f"{what} {shown} contains a backslash; use / between folders")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise _Refused(f"{what} {shown} contains a control character (newline, tab...)")
    if raw.startswith("/"):
        raise _Refused(f"{what} {shown} is an absolute path; paths must be relative to the archive root")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Refused(f"{what} {shown} has a '..' component; paths must stay inside the archive")
    encoded = raw.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES:
        raise _Refused(f"{what} {shown} is longer than {MAX_PATH_BYTES} bytes")
    if any(len(p.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES for p in parts):
        raise _Refused(f"{what} {shown} has a component longer than {MAX_COMPONENT_BYTES} bytes")
    return parts


class _Validation:
    """One pass over one archive: the running totals and the rules, member by member."""

    def __init__(self, limits: ArchiveLimits, require_run_sh: bool, tree: "_Tree | None" = None):
        self.limits = limits
        self.require_run_sh = require_run_sh
        # Shared with the archives unpacked before this one into the same folder.
        self.tree = tree or _Tree()
        self.members = 0
        self.symlink_count = 0
        self.unpacked = 0
        self.special_bits = 0
        self.run_sh: int | None = None
        # A run.sh one folder down (``myjob/run.sh``): the usual packing mistake.
        self.nested_run_sh: str | None = None

    def check(self, member: tarfile.TarInfo, global_pax: dict[str, str]) -> None:
        shown = _show(member.name)
        self.members += 1
        if self.members > self.limits.max_members:
            raise _Refused(
                f"has more than {self.limits.max_members} members, the limit for an archive; "
                "pack fewer, larger files",
                too_large=True,
            )
        for keyword in global_pax:
            if keyword.startswith(_GLOBAL_KEYWORDS_REFUSED):
                raise _Refused(f"has a global pax header setting {keyword!r}, which other tars read differently")
        if any(k.startswith("GNU.sparse.") for k in member.pax_headers):
            raise _Refused(f"has a sparse member {shown}; {_NO_SPARSE}")
        if member.type in _SPECIAL_TYPES:
            raise _Refused(
                f"member {shown} is {_SPECIAL_TYPES[member.type]}; only files, folders and links are allowed"
            )
        if member.type not in _ALLOWED_TYPES:
            raise _Refused(
                f"member {shown} has type {member.type!r}, which is not a file, folder or link; "
                "re-create the archive with plain tar options"
            )
        if member.size < 0 or (member.type not in _FILE_TYPES and member.size != 0):
            raise _Refused(
                f"member {shown} declares {member.size} bytes of data, which its type cannot have; "
                "tar programs disagree on such headers"
            )
        if member.mode & 0o7000:
            self.special_bits += 1

        kind = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink"}.get(member.type, "file")
        if member.type != tarfile.DIRTYPE and member.name.endswith("/"):
            raise _Refused(f"member {shown} ends with '/' but is not a folder")
        parts = _split_name(member.name, "member", shown)
        if not parts:
            if kind != "dir":
                raise _Refused(f"member {shown} has an empty name")
            return  # the archive root itself ("./")

        mode = member.mode
        if member.type == tarfile.LNKTYPE:
            mode = self._check_hard_link(member, shown)
        node = self.tree.add(parts, kind, mode, shown)
        if parts == [RUN_SH]:
            if kind != "file":
                what = "a symlink" if kind == "symlink" else "a folder"
                raise _Refused(f"has {RUN_SH} as {what}; {RUN_SH} must be a regular file at the root")
            self.run_sh = node
        elif len(parts) == 2 and parts[1] == RUN_SH and kind == "file" and self.nested_run_sh is None:
            self.nested_run_sh = parts[0]
        if member.type == tarfile.SYMTYPE:
            self.symlink_count += 1
            self._check_symlink(member, shown, parts, node)

        if member.type in _FILE_TYPES:
            self.unpacked += member.size
            if self.unpacked > self.limits.max_unpacked_bytes:
                raise _Refused(
                    f"would unpack to more than {_mib(self.limits.max_unpacked_bytes)}, the limit "
                    f"for an archive (reached at member {shown}, which declares {member.size} bytes); "
                    f"split the data, or ask the operator to raise {self.limits.setting}",
                    too_large=True,
                )

    def _check_hard_link(self, member: tarfile.TarInfo, shown: str) -> int:
        """A hard link shares an earlier regular file; returns that file's mode."""
        target = member.linkname
        if not target:
            raise _Refused(f"hard link {shown} has an empty target")
        target_parts = _split_name(target, f"hard link {shown}: target", _show(target))
        node = self.tree.lookup(target_parts) if target_parts else None
        if node is None or self.tree.kind[node] != "file":
            raise _Refused(
                f"hard link {shown} points to {_show(target)}, which is not a regular file "
                "earlier in the archive"
            )
        return self.tree.mode[node]

    def _check_symlink(self, member: tarfile.TarInfo, shown: str, parts: list[str], node: int) -> None:
        """Refuse a target that leaves the archive, as far as the links seen so far tell."""
        target = member.linkname
        if not target:
            raise _Refused(f"symlink {shown} has an empty target")
        if target.startswith("/"):
            raise _Refused(
                f"symlink {shown} points to the absolute path {_show(target)}, outside the archive; "
                "links must be relative and stay inside"
            )
        for bad, what in (("\0", "a NUL character"), ("\\", "a backslash")):
            if bad in target:
                raise _Refused(f"symlink {shown} has a target with {what}")
        if len(target.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
            raise _Refused(f"symlink {shown} has a target longer than {MAX_PATH_BYTES} bytes")
        # Checked now on its own; rechecked through the other links once all are known.
        self.tree.symlinks[node] = (shown, parts, target)
        problem = self.tree.escapes(node, parts, target)
        if problem:
            raise _Refused(f"symlink {shown} points to {_show(target)}, which {problem}; links must stay inside")

    def wants_head(self, member: tarfile.TarInfo) -> bool:
        """run.sh's first bytes are read (once) to catch Windows line endings."""
        return self.require_run_sh and member.isfile() and member.size > 0 and _split_name(
            member.name, "member", _show(member.name)) == [RUN_SH]

    def check_head(self, head: bytes) -> None:
        first_line = head.split(b"\n", 1)[0]
        if first_line.endswith(b"\r"):
            raise _Refused(
                f"has a {RUN_SH} with Windows line endings (its first line ends in \\r), which the shell "
                f"cannot run; fix it with: sed -i 's/\\r$//' {RUN_SH} and pack again"
            )

    def finish(self) -> None:
        """Checks that need the whole archive: link chains, and run.sh."""
        for node, (shown, parts, target) in self.tree.symlinks.items():
            problem = self.tree.escapes(node, parts, target)
            if problem:
                others = "the archive's other links" if len(self.tree.fields) < 2 else (
                    f"the links of {', '.join(dict.fromkeys(self.tree.fields))}, unpacked into one folder")
                raise _Refused(
                    f"symlink {shown}{self.tree.made_by(node)} points to {_show(target)}, which {problem} "
                    f"when followed through {others}"
                )
        if self.require_run_sh and self.run_sh is None and self.nested_run_sh is not None:
            name = self.nested_run_sh
            # As the user would type it in a shell (quoted when it needs to be).
            folder = shlex.quote(name) if name.isprintable() and len(name) <= 100 else _show(name)
            raise _Refused(
                f"has no {RUN_SH} at its root, but found {folder}/{RUN_SH}: pack the folder's contents, "
                f"not the folder, with: tar czf bundle.tar.gz -C {folder} ."
            )
        if self.require_run_sh and self.run_sh is None:
            raise _Refused(
                f"has no {RUN_SH} at its root; the bundle's entry point must be ./{RUN_SH} "
                f"({_HOW_TO_PACK})"
            )


def validate_archive(
    path: Path, *, field: str, limits: ArchiveLimits, require_run_sh: bool
) -> ArchiveSummary:
    """Read the archive once, as a stream, and refuse it at the first problem.

    Returns what it holds; raises :class:`ArchiveRejected` naming ``field``. Writes
    nothing and holds at most one chunk of data plus the member names in memory.
    """
    return _validate(Path(path), field, limits, require_run_sh, _Tree())


def validate_archives(archives: list[ArchiveSource], *, limits: ArchiveLimits) -> list[ArchiveSummary]:
    """Archives unpacked one after the other into one folder, validated as one tree.

    Each is checked as :func:`validate_archive` does (the limits apply to each), and the
    paths and links of those before it count: see "One tree" in the module's notes.
    Raises :class:`ArchiveRejected` naming the field of the archive that breaks a rule.
    """
    tree = _Tree()
    return [_validate(Path(a.path), a.field, a.limits or limits, a.require_run_sh, tree) for a in archives]


def _validate(path: Path, field: str, limits: ArchiveLimits, require_run_sh: bool, tree: _Tree) -> ArchiveSummary:
    if path.stat().st_size == 0:
        raise ArchiveRejected(f"{field} is empty; it must be a .tar.gz ({_HOW_TO_PACK})", field=field)
    tree.begin(field)
    validation = _Validation(limits, require_run_sh, tree)
    reader = _InflatingReader(path, limits.max_inflated_bytes, limits.setting)
    try:
        _walk(reader, validation)
        validation.finish()
    except _Refused as exc:
        raise ArchiveRejected(f"{field} {exc.message}", field=field, too_large=exc.too_large) from None
    except gzip.BadGzipFile as exc:
        raise ArchiveRejected(_not_gzip_reason(path, field, reader.position, exc), field=field) from None
    except EOFError:
        raise ArchiveRejected(
            f"{field} is truncated: the gzip stream ends early (was the upload cut short?)", field=field
        ) from None
    except zlib.error as exc:
        raise ArchiveRejected(f"{field} is a corrupt gzip stream ({exc})", field=field) from None
    finally:
        reader.close()

    run_sh = validation.run_sh
    return ArchiveSummary(
        members=validation.members,
        unpacked_bytes=validation.unpacked,
        inflated_bytes=reader.position,
        has_run_sh=run_sh is not None,
        run_sh_executable=run_sh is not None and bool(validation.tree.mode[run_sh] & 0o100),
        special_bits_stripped=validation.special_bits,
        symlinks=validation.symlink_count,
    )


def _walk(reader: _InflatingReader, validation: _Validation) -> None:
    try:
        tar = tarfile.TarFile(
            fileobj=reader, mode="r", tarinfo=_CheckedTarInfo, encoding="utf-8", errors="surrogateescape"
        )
    except (tarfile.ReadError, ValueError, UnicodeError) as exc:
        raise _Refused(f"is gzip-compressed but does not hold a tar archive ({exc}); {_HOW_TO_PACK}") from None
    with tar:
        while True:
            try:
                member = tar.next()
            except tarfile.ReadError as exc:
                raise _Refused(f"is corrupt or truncated after member {validation.members}: {exc}") from None
            except (ValueError, UnicodeError) as exc:  # tarfile parsing a malformed pax value
                raise _Refused(f"has a malformed header after member {validation.members}: {exc}") from None
            if member is None:
                break
            validation.check(member, tar.pax_headers)
            if validation.wants_head(member):
                validation.check_head(tar.extractfile(member).read(RUN_SH_HEAD_BYTES))
            tar.members.clear()  # tarfile keeps every member otherwise; we need none of them

    # tarfile stops at the first all-zero block, or quietly at a broken or missing one.
    ended_cleanly = reader.position == tar.offset + BLOCK and reader.last_read == bytes(BLOCK)
    if not ended_cleanly:
        raise _Refused(
            f"does not end with tar's end-of-archive block (a corrupt or truncated header near "
            f"byte {tar.offset}); was the upload cut short?"
        )

    def only_zeros(chunk: bytes) -> None:
        if chunk.count(0) != len(chunk):
            raise _Refused(
                "has data after tar's end-of-archive block; other tar programs would read "
                "members hidden there, so the archive is refused"
            )

    reader.drain(only_zeros)


def _not_gzip_reason(path: Path, field: str, position: int, exc: Exception) -> str:
    if position > 0:
        return f"{field} is a corrupt gzip stream ({exc})"
    with open(path, "rb") as fh:
        head = fh.read(BLOCK)
    hint = next((h for magic, h in _HINTS.items() if head.startswith(magic)), None)
    if hint is None and len(head) == BLOCK and head[257:262] == b"ustar":
        hint = "it looks like an uncompressed tar"
    hint = f" ({hint})" if hint else ""
    return f"{field} is not a gzip file{hint}; it must be a .tar.gz: {_HOW_TO_PACK}"


# --- building bundles ------------------------------------------------------------------


def _write_atomically(dest: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary sibling and rename, so dest is whole or absent."""
    dest = Path(dest)
    partial = dest.with_name(dest.name + ".part")
    try:
        write(partial)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def write_files_bundle(script_text: str, files: dict[str, bytes], dest_path: Path) -> None:
    """A bundle of ``run.sh`` (as write_script_bundle writes it) and more files by their
    relative names (mode 0644), e.g. a TES task's inline inputs."""
    entries = [(RUN_SH, script_text.replace("\r\n", "\n").encode("utf-8", "surrogateescape"), 0o755)]
    entries += [(name, data, 0o644) for name, data in files.items()]
    mtime = int(time.time())

    def write(target: Path) -> None:
        with tarfile.open(target, "w:gz", compresslevel=6) as tar:
            for name, data, mode in entries:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), mode, mtime
                tar.addfile(info, io.BytesIO(data))

    _write_atomically(dest_path, write)


def write_script_bundle(script_text: str, dest_path: Path) -> None:
    """The original API's form: the text of one script becomes ``run.sh`` (mode 0755).

    The text is kept as given, with one exception: CRLF line ends become LF, because
    HTML forms submit text with CRLF (and ``/bin/sh\\r`` is not an interpreter). No
    ``#!`` line is added: a script without one is run by the launcher with /bin/sh.
    """
    write_files_bundle(script_text, {}, dest_path)


def _plain_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Members as a bundle should carry them: no owner, no special mode bits."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode &= 0o777
    return info


def pack_directory(src_dir: Path, dest_path: Path, *, limits: ArchiveLimits | None = None) -> ArchiveSummary:
    """A bundle (.tar.gz) from a folder whose root holds ``run.sh``; used by clients.

    Members are named relative to the folder (``run.sh``, ``lib/x.py``), without owners
    or setuid bits. The result is validated like an upload, so a folder the gateway
    would refuse (a link leaving it, a fifo...) fails here, and no file is left behind.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise NotADirectoryError(f"{src} is not a folder")
    if Path(dest_path).resolve().is_relative_to(src.resolve()):
        raise ValueError(f"{dest_path} is inside {src}: the bundle would contain itself")
    run_sh = src / RUN_SH
    if run_sh.is_symlink() or not run_sh.is_file():
        raise ArchiveRejected(
            f"{src} has no {RUN_SH} (a regular file) at its root; the bundle's entry point must be ./{RUN_SH}",
            field="job-bundle",
        )

    summary: list[ArchiveSummary] = []

    def write(target: Path) -> None:
        with tarfile.open(target, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
            for child in sorted(os.listdir(src)):
                tar.add(src / child, arcname=child, recursive=True, filter=_plain_member)
        summary.append(
            validate_archive(target, field="job-bundle", limits=limits or ArchiveLimits(), require_run_sh=True)
        )

    _write_atomically(dest_path, write)
    return summary[0]
