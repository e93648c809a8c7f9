"""The cached Debian root filesystem that supplies the daemons on hosts without HTCondor.

Debian 12 has no HTCondor package and installing Debian 13's into the host would upgrade
its libc and Python, so the daemons live in a Debian 13 (trixie) tree of their own. It
is built once (~30 s, ~560 MB) and then only ever read: each pool mounts it as the lower
layer of an overlay (see runtime.py), so the cache stays a clean, shareable image.

A build happens in a temporary folder beside the cache and is renamed into place only
when complete, so a half-built tree is never used; a stamp file inside tells a complete
tree from anything else that happens to sit at that path.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from . import host, mirror
from .commands import clean_env, run
from .errors import PoolError
from .locking import exclusive
from .mounts import mount, unmount_all_under

log = logging.getLogger(__name__)

SUITE = "trixie"
# python3: the example job bundles are Python scripts; procps: ps/pkill for job scripts
# and for whoever debugs the pool from inside.
PACKAGES = ("condor", "python3", "procps")
STAMP = ".modaclouds-batch-rootfs"
# ~560 MB of tree plus the downloaded .debs before `apt-get clean`, with a margin.
NEEDED_BYTES = 1200 * host.MB


def is_complete(path: Path) -> bool:
    return (Path(path) / STAMP).is_file()


def describe(path: Path) -> dict:
    """What the stamp says about a built tree (suite, mirror, condor version, date)."""
    try:
        return json.loads((Path(path) / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("unreadable rootfs stamp in %s: %s", path, exc)
        return {}


def choose_mirror(override: str | None, root: Path = Path("/")) -> str:
    """``override`` if given, else the host's own Debian mirror, else a PoolError."""
    if override:
        return override.rstrip("/")
    found = mirror.find_debian_mirror(mirror.host_apt_sources(root), mirror.host_codename(root))
    if not found:
        raise PoolError("no Debian mirror found in the host's apt sources "
                        "(/etc/apt/sources.list.d/*.sources, /etc/apt/sources.list); "
                        "give one with --mirror or MODACLOUDS_BATCH_DEBIAN_MIRROR")
    return found


def ensure_rootfs(cache: Path, mirror_override: str | None, say: Callable[[str], None]) -> Path:
    """Return ``cache`` once it holds a complete tree, building it first if needed."""
    cache = Path(cache)
    if is_complete(cache):
        return cache
    if cache.exists():
        raise PoolError(f"{cache} exists but is not a complete root filesystem (no {STAMP}); "
                        "remove it so that `pool up` can rebuild it")
    host.require_root("building the HTCondor root filesystem")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(cache.parent / f".{cache.name}.lock"):
        if is_complete(cache):  # built by another process while we waited
            return cache
        _remove_stale_builds(cache, say)
        host.require_free_space(cache.parent, NEEDED_BYTES, "to build the root filesystem")
        source = choose_mirror(mirror_override)
        debootstrap = _ensure_debootstrap(say)
        building = cache.parent / f".{cache.name}.build-{os.getpid()}"
        transcript = cache.parent / f"{cache.name}.build.log"
        transcript.write_text("", encoding="utf-8")
        say(f"building Debian {SUITE} root filesystem in {cache} from {source} "
            f"(once; about 30-90 s; transcript: {transcript})")
        started = time.monotonic()
        try:
            _build(building, source, debootstrap, transcript, say)
            os.rename(building, cache)
        except BaseException:
            _discard(building, say)
            raise
        say(f"root filesystem ready in {time.monotonic() - started:.0f} s")
    return cache


def _build(root: Path, source: str, debootstrap: str, transcript: Path, say) -> None:
    run([debootstrap, "--variant=minbase", SUITE, root, source], "debootstrap",
        env=clean_env(), timeout=1800, transcript=transcript)
    # Package scripts must not start services in the image: the pool starts its own
    # condor_master with its own config. (condor's postinst otherwise starts one.)
    policy = root / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\n# modaclouds-batch: never start services in this image.\nexit 101\n")
    policy.chmod(0o755)
    mount(["-t", "proc", "proc"], root / "proc", "mounting proc in the new root filesystem")
    try:
        env = clean_env({"DEBIAN_FRONTEND": "noninteractive"})
        say(f"installing {' '.join(PACKAGES)} inside it")
        run(["chroot", root, "apt-get", "update"], "apt-get update in the root filesystem",
            env=env, timeout=900, transcript=transcript)
        run(["chroot", root, "apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
            "installing HTCondor in the root filesystem", env=env, timeout=1800,
            transcript=transcript)
        run(["chroot", root, "apt-get", "clean"], "apt-get clean", env=env, transcript=transcript)
        version = run(["chroot", root, "condor_version"], "condor_version", env=env).splitlines()
    finally:
        unmount_all_under(root)
    stamp = {
        "suite": SUITE,
        "mirror": source,
        "packages": list(PACKAGES),
        "condor_version": version[0] if version else "",
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (root / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")


def _ensure_debootstrap(say) -> str:
    found = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if found:
        return found
    if not shutil.which("apt-get"):
        raise PoolError("debootstrap is not installed and there is no apt-get to install it; "
                        "install debootstrap, or HTCondor itself")
    say("installing debootstrap on the host (apt-get)")
    env = clean_env({"DEBIAN_FRONTEND": "noninteractive"})
    try:
        run(["apt-get", "update"], "apt-get update", env=env, timeout=900)
        run(["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"],
            "apt-get install debootstrap", env=env, timeout=900)
    except PoolError as exc:
        raise PoolError(f"debootstrap is not installed and apt-get could not install it: {exc}") from exc
    found = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if not found:
        raise PoolError("apt-get installed debootstrap but it is not on PATH")
    return found


_BUILD_NAME = re.compile(r"\.(?P<name>.+)\.build-(?P<pid>\d+)$")


def _remove_stale_builds(cache: Path, say) -> None:
    """Delete leftovers of builds whose process is gone (a crash, a Ctrl-C during debootstrap)."""
    for candidate in cache.parent.glob(f".{cache.name}.build-*"):
        match = _BUILD_NAME.match(candidate.name)
        if not match or host.pid_alive(int(match["pid"])):
            continue
        say(f"removing an unfinished build left by process {match['pid']}: {candidate}")
        _discard(candidate, say)


def _discard(path: Path, say) -> None:
    """Remove a half-built tree; unmount first so rmtree never walks into /proc."""
    if not path.exists():
        return
    try:
        unmount_all_under(path)
    except PoolError as exc:
        say(f"cannot remove {path}: {exc}")
        log.warning("leaving half-built root filesystem %s: %s", path, exc)
        return
    def report(fn, where, exc):
        error = exc[1] if isinstance(exc, tuple) else exc
        log.warning("removing %s: %s failed on %s: %s", path, fn.__name__, where, error)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=report)
    else:
        shutil.rmtree(path, onerror=report)
