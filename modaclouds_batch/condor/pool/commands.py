"""Run external commands (mount, debootstrap, apt-get, chroot...) with failures as PoolErrors."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

from .errors import PoolError

log = logging.getLogger(__name__)

# A minimal, predictable environment for anything run inside the chroot or as the pool's
# tools: the caller's PYTHONPATH, virtualenv or CONDOR_CONFIG must not leak in.
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    env.update(extra or {})
    return env


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    argv: Sequence[str | Path],
    what: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 600,
    transcript: Path | None = None,
) -> str:
    """Run ``argv``; return its stdout, or raise PoolError saying ``what`` failed and why.

    With ``transcript`` the command's output is appended to that file and the error names
    it (long builds); otherwise the last lines of stderr go into the message.
    """
    argv = [str(a) for a in argv]
    log.debug("running %s", " ".join(argv))
    try:
        if transcript is not None:
            with open(transcript, "a", encoding="utf-8") as out:
                out.write(f"\n$ {' '.join(argv)}\n")
                out.flush()
                proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                      timeout=timeout, check=False, stdin=subprocess.DEVNULL)
            stdout, detail = "", f"see {transcript}"
        else:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout,
                                  check=False, stdin=subprocess.DEVNULL)
            stdout, detail = proc.stdout, _tail(proc.stderr or proc.stdout)
    except FileNotFoundError as exc:
        raise PoolError(f"{what}: {argv[0]} is not installed ({exc.strerror})") from exc
    except subprocess.TimeoutExpired as exc:
        raise PoolError(f"{what}: no answer from {argv[0]} within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise PoolError(f"{what} failed (exit {proc.returncode}): {detail}")
    return stdout
