"""Start, recognise and stop the condor_master a pool runs, always by pid.

The master daemonises and writes its pid to ``-pidfile``; a pid counts as ours only if
that process is a condor_master started with this node's CONDOR_CONFIG (read from
/proc), so a recycled pid or another pool's master on the same machine is never touched.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from . import host
from .errors import PoolError
from .layout import MAIN_NODE, PoolLayout

log = logging.getLogger(__name__)

Say = Callable[[str], None]


def _read_proc(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as fh:
        return fh.read()


def is_our_master(pid: int, daemon_config: Path) -> bool:
    """Is ``pid`` a live condor_master whose CONDOR_CONFIG is ``daemon_config``?"""
    if not host.pid_alive(pid):
        return False
    try:
        argv0 = _read_proc(pid, "cmdline").split(b"\0", 1)[0].decode(errors="replace")
        environ = _read_proc(pid, "environ").split(b"\0")
    except OSError as exc:
        log.info("cannot inspect pid %s: %s", pid, exc)
        return False
    wanted = f"CONDOR_CONFIG={daemon_config}".encode()
    return os.path.basename(argv0) == "condor_master" and wanted in environ


def running_master(layout: PoolLayout, node: str = MAIN_NODE) -> int | None:
    """The pid of this node's condor_master when it runs, else None."""
    try:
        pid = int(layout.master_pid_file(node).read_text().strip())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("unreadable pid file %s: %s", layout.master_pid_file(node), exc)
        return None
    return pid if is_our_master(pid, layout.daemon_config(node)) else None


def start_master(runtime, layout: PoolLayout, node: str = MAIN_NODE, timeout: float = 20) -> int:
    """Start this node's condor_master and return its pid once it has written it."""
    pid_file = layout.master_pid_file(node)
    pid_file.unlink(missing_ok=True)
    master_log = layout.log_dir(node) / "MasterLog"
    argv = runtime.command([runtime.condor_master, "-pidfile", str(pid_file)])
    env = runtime.env(layout.daemon_config(node))
    # The master forks into the background; the process we start exits at once. Its
    # output (before its own log is open) goes to a file beside the log.
    early = layout.log_dir(node) / "master.stdout"
    with open(early, "ab") as out:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise PoolError(f"condor_master did not start (exit {proc.returncode}); read {early} and {master_log}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = running_master(layout, node)
        if pid:
            return pid
        time.sleep(0.1)
    raise PoolError(f"condor_master wrote no pid within {timeout:.0f} s; read {master_log}")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (daemons, procd, shadows, starters, jobs)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_read_proc(int(entry), "stat").rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if host.pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if host.pid_alive(p)]
    return alive


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


def stop_master(pid: int, say: Say, timeout: float = 30) -> None:
    """SIGQUIT (fast shutdown) to our master; wait until it and everything it started are gone.

    What the master started is recorded before the signal; anything of it still alive
    after ``timeout`` gets SIGKILL by pid, and is said so.
    """
    family = descendants(pid)
    _kill([pid], signal.SIGQUIT)
    alive = _wait_gone([pid, *family], timeout)
    if alive:
        say(f"still running {timeout:.0f} s after SIGQUIT, killing: {alive}")
        _kill(alive, signal.SIGKILL)
        alive = _wait_gone(alive, 10)
    if alive:
        raise PoolError(f"processes of the pool would not exit: {sorted(alive)}")


def kill_leftovers(runtime, say: Say) -> None:
    """SIGKILL processes still living in the pool's filesystem once its master is gone
    (a job that escaped its starter, a master that crashed): they would keep mounts busy."""
    strays = [p for p in runtime.leftover_pids() if host.pid_alive(p)]
    if not strays:
        return
    say(f"processes left in the pool's chroot, killing: {strays}")
    _kill(strays, signal.SIGKILL)
    alive = _wait_gone(strays, 10)
    if alive:
        raise PoolError(f"processes in the pool's chroot would not exit: {alive}")
