"""Where every file of a managed pool lives, derived from the settings alone.

Runtime state (daemon config, logs, spool, execute folders, pid file, signing key) lives
under ``settings.pool_dir``; the cached root filesystem (chroot mode) is only ever read.
In chroot mode ``state_dir`` is bind-mounted into the chroot at the same absolute path,
so every path below means the same file inside and outside the chroot: a log path in an
error message can be opened as printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The node name of the all-in-one node. A later execute-only node gets its own name and
# its own folder beside it (``node_dir("exec2")``), sharing the pool-wide files.
MAIN_NODE = "main"


@dataclass(frozen=True)
class PoolLayout:
    pool_dir: Path
    client_config: Path

    @classmethod
    def from_settings(cls, settings) -> "PoolLayout":
        return cls(pool_dir=Path(settings.pool_dir), client_config=Path(settings.condor_config))

    # --- pool-wide ---------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        """Everything the daemons read or write (bind-mounted into the chroot)."""
        return self.pool_dir / "condor"

    @property
    def password_dir(self) -> Path:
        """SEC_PASSWORD_DIRECTORY: the pool signing key the collector creates (root, 0700)."""
        return self.state_dir / "passwords.d"

    @property
    def signing_key(self) -> Path:
        return self.password_dir / "POOL"

    @property
    def system_token_dir(self) -> Path:
        """SEC_TOKEN_SYSTEM_DIRECTORY: tokens the daemons themselves would use (none today)."""
        return self.state_dir / "tokens.d"

    @property
    def state_file(self) -> Path:
        """What `up` started and how (mode, chroot root, master pid): read by down/status."""
        return self.pool_dir / "pool.json"

    @property
    def lock_file(self) -> Path:
        """Serialises up/down/token of one pool across processes."""
        return self.pool_dir / ".lock"

    # --- per node ----------------------------------------------------------------------

    def node_dir(self, node: str = MAIN_NODE) -> Path:
        """LOCAL_DIR of one node: its log, spool, execute, lock and run folders."""
        return self.state_dir / node

    def daemon_config(self, node: str = MAIN_NODE) -> Path:
        """The CONDOR_CONFIG its condor_master is started with."""
        return self.state_dir / f"condor_config.{node}"

    def log_dir(self, node: str = MAIN_NODE) -> Path:
        return self.node_dir(node) / "log"

    def master_pid_file(self, node: str = MAIN_NODE) -> Path:
        return self.node_dir(node) / "run" / "master.pid"

    def runtime_dirs(self, node: str = MAIN_NODE) -> dict[str, Path]:
        """Folders the daemons write to, which must exist and belong to the condor user."""
        base = self.node_dir(node)
        return {name: base / name for name in ("log", "spool", "execute", "lock", "run")}

    # --- gateway (client) side ---------------------------------------------------------

    @property
    def client_token_dir(self) -> Path:
        """SEC_TOKEN_DIRECTORY of the client config: a folder beside it."""
        return self.client_config.parent / "tokens.d"

    @property
    def client_token(self) -> Path:
        return self.client_token_dir / "gateway.token"

    # --- chroot mode -------------------------------------------------------------------

    @property
    def chroot_dir(self) -> Path:
        return self.pool_dir / "chroot"

    @property
    def chroot_root(self) -> Path:
        """The overlay mount: the cached image below, this pool's changes above."""
        return self.chroot_dir / "root"

    @property
    def overlay_upper(self) -> Path:
        return self.chroot_dir / "upper"

    @property
    def overlay_work(self) -> Path:
        return self.chroot_dir / "work"
