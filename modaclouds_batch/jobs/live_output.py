"""What a job prints, while it runs and after it is removed.

With ``stream_output`` HTCondor's shadow appends the job's stdout and stderr to files in the
job's spool folder (the ad's ``Iwd``) as the starter sends them, a second or so after the
job prints. Streamed files never travel back at exit, so they are copied into the job's own
folder before the job leaves the queue: when its outputs are collected, when it is seen
removed, and right before the gateway removes it (the spool goes with the job).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from ..condor import submit_description as sd
from ..home import open_private

log = logging.getLogger(__name__)

LIVE_FILES = (sd.STDOUT_FILE, sd.STDERR_FILE)


def live_dir_of(ad: Mapping[str, Any]) -> str | None:
    """Where a streaming job's output grows (None when the job does not stream)."""
    return ad.get("Iwd") if ad.get("StreamOut") else None


def live_file(live_dir: str | None, filename: str) -> Path | None:
    """The growing file, if it is there; a link is never followed (the spool is not ours)."""
    if not live_dir:
        return None
    path = Path(live_dir) / filename
    return path if path.is_file() and not path.is_symlink() else None


def keep(live_dir: str | None, job_dir: str | Path) -> int:
    """Copy what the job printed so far into its folder (each file whole or not at all)."""
    kept = 0
    for filename in LIVE_FILES:
        source = live_file(live_dir, filename)
        if source is None:
            continue
        target = Path(job_dir) / filename
        partial = target.with_name(f".{filename}.part")
        try:
            with open(source, "rb") as src, open_private(partial) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(partial, target)
            kept += 1
        except OSError as exc:  # the spool went away meanwhile: keep what is there
            partial.unlink(missing_ok=True)
            log.warning("could not keep %s of %s: %s", filename, live_dir, exc)
    return kept
