"""The gateway's state on disk: one process per home and per database, private modes.

``serve`` claims its state before touching it: an exclusive ``flock`` on
``<home>/.gateway.lock`` and on ``<db_path>.lock``. A second gateway on the same home, or
on the same database from another home, refuses to start (``StateBusy``, exit code 75,
EX_TEMPFAIL) naming the pid that holds the lock. The kernel drops a lock when its holder
dies, so a ``kill -9`` never leaves the state locked.

Everything the gateway creates is private whatever the umask: folders 0700, files 0600.
The one exception is the home itself when the gateway manages a pool that lives inside it
(the default ``<home>/pool``): it is 0711, so that HTCondor's daemons, which run as the ``condor``
user when the pool uses a local HTCondor, can traverse it to their own folders; 0711
lets them pass through without listing it, and every folder below is 0700 again.

Job folders carry a marker naming the gateway instance that made them (``MARKER``), so
that start-up's sweep of unfinished submissions deletes only folders that are
demonstrably this gateway's; ``<home>/.gateway-instance`` names the instance that last
served from the home.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL: the state is busy now; retry once the other process stopped.
EXIT_STATE_BUSY = 75
HOME_LOCK = ".gateway.lock"
# In the home: the instance that last served from it. In a job folder: the instance that made it.
MARKER = ".gateway-instance"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
TRAVERSABLE_DIR = 0o711


class StateBusy(Exception):
    """Another process holds the home's or the database's lock."""

    def __init__(self, what: str, lock_path: Path, holder: int | None):
        self.what = what
        self.lock_path = lock_path
        self.holder = holder
        who = f"pid {holder}" if holder else "another process (its pid is not recorded yet)"
        super().__init__(
            f"{what} is in use by {who} (lock {lock_path}); one home and one database serve one "
            "gateway: stop that one, or give this one its own --home and --db-path")


@dataclass
class Claim:
    """The locks ``serve`` holds while it runs; ``release`` (or process exit) drops them."""

    fds: list[int] = field(default_factory=list)

    def release(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


def private_dir(path: Path, mode: int = PRIVATE_DIR) -> Path:
    """Create ``path`` (and missing parents) and give it exactly ``mode``; returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    os.chmod(path, mode)
    return path


def make_private_dir(path: Path) -> Path:
    """Create a new folder 0700 (FileExistsError if it is there already)."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)
    return path


def open_private(path: Path, mode: str = "wb"):
    """Open a file for writing, created (or truncated) 0600 whatever the umask."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def write_private(path: Path, text: str) -> None:
    with open_private(path, "w") as fh:
        fh.write(text)


def restrict_tree(path: Path) -> None:
    """Take group and other bits off everything under ``path`` (files HTCondor wrote)."""
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            child = os.path.join(root, name)
            try:
                st = os.lstat(child)
                if not os.path.islink(child) and st.st_mode & 0o077:
                    os.chmod(child, st.st_mode & 0o700)
            except OSError as exc:  # gone meanwhile: nothing left to protect
                log.debug("could not restrict %s: %s", child, exc)


def home_mode(settings) -> int:
    """0711 when the gateway manages a pool that lives inside the home (see the module's
    docstring), else 0700."""
    home = Path(settings.home).resolve()
    pool = Path(settings.pool_dir).resolve()
    return TRAVERSABLE_DIR if settings.manages_pool and home in pool.parents else PRIVATE_DIR


def prepare(settings) -> None:
    """The home and its folders, created (or tightened) to their private modes."""
    private_dir(Path(settings.home), home_mode(settings))
    private_dir(Path(settings.jobs_dir))
    private_dir(Path(settings.home) / "data")
    db_path = Path(settings.db_path)
    if not db_path.parent.exists():
        private_dir(db_path.parent)


def claim(settings) -> Claim:
    """Lock the home, then the database; raises StateBusy naming the holder's pid."""
    prepare(settings)
    held = Claim()
    try:
        for what, path in ((f"the home {settings.home}", Path(settings.home) / HOME_LOCK),
                           (f"the database {settings.db_path}", Path(f"{settings.db_path}.lock"))):
            held.fds.append(_lock(path, what))
    except BaseException:
        held.release()
        raise
    return held


def _lock(path: Path, what: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise StateBusy(what, path, _holder(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _holder(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def mark_home(home: Path, instance_id: str) -> str | None:
    """Record the instance serving from ``home``; returns the one recorded before, if another."""
    marker = Path(home) / MARKER
    try:
        previous = marker.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        previous = None
    if previous != instance_id:
        write_private(marker, instance_id + "\n")
    return previous if previous != instance_id else None


def mark_job_dir(job_dir: Path, instance_id: str) -> None:
    write_private(Path(job_dir) / MARKER, instance_id + "\n")


def job_dir_owner(job_dir: Path) -> str | None:
    """The instance a job folder's marker names; None for a folder without one."""
    try:
        return (Path(job_dir) / MARKER).read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        log.warning("cannot read the marker of %s: %s", job_dir, exc)
        return None
