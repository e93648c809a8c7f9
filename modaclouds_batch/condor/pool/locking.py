"""An exclusive, cross-process lock held for the length of a `with` block.

Two `pool up` at once (the CLI and a test session, say) would otherwise both build the
root filesystem or both start a condor_master. flock is released by the kernel when the
holder dies, so a crashed `up` never leaves the pool locked.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock
