"""Questions about the host machine that decide what `up` may do (root? disk? tools?)."""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path

from .errors import PoolError

MB = 1 << 20


def is_root() -> bool:
    return os.geteuid() == 0


def require_root(why: str) -> None:
    if not is_root():
        raise PoolError(f"{why} needs root (run `modaclouds-batch pool up` as root, "
                        "or install HTCondor so that condor_master is on PATH)")


def free_bytes(path: Path) -> int:
    """Free space of the file system that holds ``path`` (or would, once created)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def require_free_space(path: Path, needed: int, why: str) -> None:
    free = free_bytes(path)
    if free < needed:
        raise PoolError(f"not enough disk space {why}: {path} has {free // MB} MB free, "
                        f"needs about {needed // MB} MB")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:
        return True  # exists but unreadable: alive as far as we can tell
    return state not in ("Z", "X")


def hostname() -> str:
    return os.uname().nodename


def port_in_use(port: int, address: str = "127.0.0.1") -> bool:
    """Does some process listen on ``address:port``? (A daemon could not bind it.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
