"""Where the daemons' binaries come from: the host's own HTCondor, or a private chroot.

Both runtimes offer the same few operations, so `up`/`down` read the same either way:

- ``prepare``: make the filesystem the daemons will see (mounts, users, folders);
- ``command``: wrap an argv so it runs with that filesystem (``chroot ROOT ...`` or as is);
- ``chown_to_condor``: give the daemons their writable folders;
- ``release``: undo ``prepare`` (unmount);
- ``leftover_pids``: processes still living in that filesystem after a stop.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from . import host
from .commands import clean_env, run
from .errors import PoolError
from .layout import PoolLayout
from .mounts import is_mounted, mount, unmount_all_under

log = logging.getLogger(__name__)

Say = Callable[[str], None]

LOCAL = "local"
CHROOT = "chroot"


def select_mode(condor_master: str | None, euid: int) -> str:
    """``local`` when HTCondor is installed, else ``chroot`` (which needs root)."""
    if condor_master:
        return LOCAL
    if euid == 0:
        return CHROOT
    raise PoolError("HTCondor is not installed (no condor_master on PATH) and building a "
                    "private copy needs root: run `modaclouds-batch pool up` as root, or "
                    "install HTCondor")


def find_condor_master() -> str | None:
    return shutil.which("condor_master")


class LocalRuntime:
    """The host's HTCondor, run with the pool's own config and folders."""

    mode = LOCAL

    def __init__(self, layout: PoolLayout, condor_master: str):
        self.layout = layout
        self.condor_master = condor_master
        self.bin_dirs = sorted({str(Path(condor_master).parent),
                                str(Path(condor_master).parent.parent / "bin")})

    @property
    def base_config(self) -> Path | None:
        """The installation's own condor_config, for its paths (never the caller's CONDOR_CONFIG)."""
        for candidate in (Path("/etc/condor/condor_config"),
                          Path(self.condor_master).parent.parent / "etc" / "condor_config"):
            if candidate.is_file():
                return candidate
        return None

    def env(self, condor_config: Path) -> dict[str, str]:
        path = ":".join(self.bin_dirs) + ":" + clean_env()["PATH"]
        return clean_env({"CONDOR_CONFIG": str(condor_config), "PATH": path})

    def command(self, argv: list[str]) -> list[str]:
        return list(argv)

    def prepare(self, identity: str, say: Say) -> None:
        if not host.is_root():
            say(f"note: not root, so the daemons and every job run as {os.environ.get('USER', 'you')}")
            return
        _ensure_user(self.command, identity, say, env=clean_env())

    def ensure_execute_accounts(self, names: tuple[str, ...], first_uid: int, say: Say) -> tuple[str, ...]:
        """Create the slots' job accounts on this host; none when not root (the daemons
        cannot switch users then). ``first_uid`` is for the chroot only: host accounts
        get the host's own next ids."""
        if not host.is_root():
            return ()
        for name in names:
            _ensure_user(self.command, name, say, env=clean_env())
        return names

    def remove_execute_accounts(self, names: tuple[str, ...], say: Say) -> None:
        if host.is_root():
            _remove_users(self.command, names, say, env=clean_env())

    def chown_to_condor(self, paths: list[Path]) -> None:
        if host.is_root():
            run(["chown", "condor:condor", *paths], "giving the pool folders to the condor user "
                "(a local HTCondor run as root needs a 'condor' account)")

    def release(self, say: Say) -> None:
        """Nothing was mounted."""

    def leftover_pids(self) -> list[int]:
        """Processes of a local install cannot be told from others but by ancestry."""
        return []


class ChrootRuntime:
    """Debian 13 tree from the cache, seen through an overlay owned by this pool.

    The overlay's upper layer (``pool_dir/chroot/upper``) receives every change (the
    ``batch`` user, /etc/hosts, runtime folders), so the cache stays a clean image and
    `up` on a cached tree is a few mounts. The pool's state folder is bind-mounted at
    the same absolute path inside, so config, logs and spool have one path everywhere.
    """

    mode = CHROOT
    base_config = Path("/etc/condor/condor_config")
    condor_master = "/usr/sbin/condor_master"

    def __init__(self, layout: PoolLayout, rootfs: Path | None):
        self.layout = layout
        self.rootfs = rootfs
        self.root = layout.chroot_root

    def env(self, condor_config: Path) -> dict[str, str]:
        return clean_env({"CONDOR_CONFIG": str(condor_config)})

    def command(self, argv: list[str]) -> list[str]:
        return ["chroot", str(self.root), *argv]

    def prepare(self, identity: str, say: Say) -> None:
        if self.rootfs is None:
            raise PoolError("internal: chroot runtime prepared without a root filesystem")
        layout, root = self.layout, self.root
        for folder in (layout.overlay_upper, layout.overlay_work, root, layout.state_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if not is_mounted(root):
            options = f"lowerdir={self.rootfs},upperdir={layout.overlay_upper},workdir={layout.overlay_work}"
            mount(["-t", "overlay", "overlay", "-o", options], root,
                  f"mounting the pool's overlay of {self.rootfs}")
            say(f"mounted {root} (overlay of {self.rootfs})")
        # hidepid: a job sees only its own account's processes (not another job's command
        # line, environment or open files); the daemons (root, or the condor group) see all.
        condor_gid = _group_id(_inside(root, Path("/etc/group")), "condor")
        mount(["-t", "proc", "-o", f"hidepid=invisible,gid={condor_gid}", "proc"], root / "proc",
              "mounting proc in the chroot")
        # Jobs (Python multiprocessing, for one) expect a writable /dev/shm.
        mount(["-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs"], root / "dev" / "shm",
              "mounting /dev/shm in the chroot")
        inside_state = _inside(root, layout.state_dir)
        mount(["--bind", str(layout.state_dir)], inside_state, "bind-mounting the pool state into the chroot")
        # Daemons resolve their own host name; without a line for it they log lookup failures.
        _inside(root, Path("/etc/hosts")).write_text(
            f"127.0.0.1\tlocalhost {host.hostname()}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            encoding="utf-8")
        # Made from inside: /var/lock is an absolute symlink that, followed from the host,
        # would land in the host's own /run/lock.
        run(self.command(["install", "-d", "-o", "condor", "-g", "condor", "-m", "0755",
                          "/run/condor", "/var/lock/condor"]),
            "creating /run/condor and /var/lock/condor in the chroot", env=clean_env())
        taken = _ids_in(Path("/"), root)
        _ensure_user(self.command, identity, say, env=clean_env(), uid=free_id(taken))

    def ensure_execute_accounts(self, names: tuple[str, ...], first_uid: int, say: Say) -> tuple[str, ...]:
        """Create the slots' job accounts in the chroot, with ids from ``first_uid`` on
        that no account of the host or the chroot has (see execute_uid_base)."""
        taken = _ids_in(Path("/"), self.root)
        for name in names:
            uid = free_id(taken, start=first_uid)
            if uid >= first_uid + EXECUTE_IDS_PER_POOL:
                raise PoolError(f"no free uid left for {name} in this pool's block "
                                f"({first_uid}-{first_uid + EXECUTE_IDS_PER_POOL - 1})")
            if _ensure_user(self.command, name, say, env=clean_env(), uid=uid):
                taken.add(uid)
        return names

    def remove_execute_accounts(self, names: tuple[str, ...], say: Say) -> None:
        _remove_users(self.command, names, say, env=clean_env())

    def chown_to_condor(self, paths: list[Path]) -> None:
        """chown by the chroot's own condor account (its uid means nothing on the host)."""
        run(self.command(["chown", "condor:condor", *map(str, paths)]),
            "giving the pool folders to the chroot's condor user", env=clean_env())

    def release(self, say: Say) -> None:
        for point in unmount_all_under(self.root):
            say(f"unmounted {point}")

    def leftover_pids(self) -> list[int]:
        """Processes whose root directory is this chroot: only ours can live there."""
        target = os.path.realpath(self.root)
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/root") == target:
                    found.append(int(entry))
            except OSError:
                continue  # exited meanwhile, or a kernel thread
        return found


def _inside(root: Path, path: Path) -> Path:
    """``path`` of the chroot as a host path, refusing one that a symlink leads out of
    (the tree's own absolute symlinks, /var/lock -> /run/lock say, point at the host's
    files when followed from outside)."""
    candidate = root / Path(path).relative_to("/")
    real_root = Path(os.path.realpath(root))
    resolved = Path(os.path.realpath(candidate))
    if resolved != real_root and real_root not in resolved.parents:
        raise PoolError(f"{path} in the chroot leads outside it ({resolved}); refusing to write there")
    return candidate


# Where uids of chroot job users start: above the host's usual human accounts, below the
# ranges Debian reserves (60000+).
FIRST_JOB_ID = 50000
# Execute accounts (one per dynamic slot) get ids far above any host's accounts, in a
# block of their own per pool: chroots of two pools share the host's pid space, and the
# starter kills every process of a dedicated account at a job's end, so two running
# pools must never give an execute account the same uid. The block is chosen by the
# collector port, which no two running pools on one host can share.
EXECUTE_ID_BASE = 1_000_000
EXECUTE_IDS_PER_POOL = 1000


def execute_uid_base(collector_port: int) -> int:
    """The first uid of this pool's execute accounts (a block of EXECUTE_IDS_PER_POOL)."""
    return EXECUTE_ID_BASE + int(collector_port) * EXECUTE_IDS_PER_POOL


def free_id(taken: set[int], start: int = FIRST_JOB_ID) -> int:
    """The first id at or above ``start`` that is not in ``taken``."""
    candidate = start
    while candidate in taken:
        candidate += 1
    return candidate


def _group_id(group_file: Path, name: str) -> int:
    """The gid of group ``name`` in a group(5) file."""
    for line in group_file.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    raise PoolError(f"no group {name} in {group_file}")


def _ids_in(*roots: Path) -> set[int]:
    """Every uid and gid named in the passwd and group files under ``roots``."""
    taken: set[int] = set()
    for root in roots:
        for name in ("passwd", "group"):
            try:
                text = (root / "etc" / name).read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                log.info("cannot read %s/etc/%s: %s", root, name, exc)
                continue
            for line in text.splitlines():
                fields = line.split(":")
                if len(fields) > 2 and fields[2].isdigit():
                    taken.add(int(fields[2]))
    return taken


def _ensure_user(command, name: str, say: Say, env, uid: int | None = None) -> bool:
    """Create an account (the pool identity, or a slot's execute account) when missing;
    True when it was created.

    In a chroot, processes still share the host's pid space: a job whose uid belongs to
    some host account could signal that account's processes. So the chroot's job user
    gets a uid (and gid) no account on the host or in the chroot has.
    """
    try:
        run(command(["getent", "passwd", name]), f"looking up user {name}", env=env)
        return False
    except PoolError as exc:
        log.debug("user %s missing (%s); creating it", name, exc)
    ids = []
    if uid is not None:
        run(command(["groupadd", "--gid", str(uid), name]), f"creating the job group {name}", env=env)
        ids = ["--uid", str(uid), "--gid", str(uid)]
    else:
        ids = ["--user-group"]
    run(command(["useradd", *ids, "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", name]), f"creating the job user {name}", env=env)
    say(f"created user {name}" + (f" (uid {uid})" if uid is not None else ""))
    return True


def _remove_users(command, names: tuple[str, ...], say: Say, env) -> None:
    """Delete accounts (and their groups) that exist; a missing one is no error."""
    for name in names:
        try:
            run(command(["getent", "passwd", name]), f"looking up user {name}", env=env)
        except PoolError:
            continue
        run(command(["userdel", name]), f"deleting the execute account {name}", env=env)
        say(f"deleted user {name}")
