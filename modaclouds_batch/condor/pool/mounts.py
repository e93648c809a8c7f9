"""Mount points, read from the kernel's own table so that up/down are idempotent.

Nothing here remembers what it mounted: /proc/self/mountinfo is the truth, which also
cleans up after an `up` that died half-way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .commands import run

log = logging.getLogger(__name__)


def _unescape(field: str) -> str:
    # mountinfo escapes blanks, tabs, newlines and backslashes as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(mountinfo: str | None = None) -> list[Path]:
    """Every mount point of this mount namespace, in mount order."""
    if mountinfo is None:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            mountinfo = fh.read()
    return [Path(_unescape(line.split()[4])) for line in mountinfo.splitlines() if line.strip()]


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def is_mounted(path: Path) -> bool:
    return _real(path) in mount_points()


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest (most recently mounted) first."""
    base = _real(path)
    inside = [p for p in mount_points() if p == base or base in p.parents]
    return list(reversed(inside))


def mount(args: list[str], target: Path, what: str) -> None:
    """``mount ARGS TARGET`` unless something is already mounted there."""
    if is_mounted(target):
        log.debug("%s already mounted", target)
        return
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", *args, target], what)


def unmount_all_under(path: Path) -> list[Path]:
    """Unmount everything at or below ``path``, deepest first; return what was unmounted.

    A busy mount (some process still inside) raises PoolError naming it: lazily detaching
    it would hide the leak instead of fixing it.
    """
    done = []
    for point in mounts_under(path):
        run(["umount", point], f"unmounting {point}")
        done.append(point)
    return done
