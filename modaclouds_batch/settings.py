"""The gateway's configuration: one frozen dataclass.

Values come, in increasing precedence, from the defaults below, a TOML file
(``--config`` or ``MODACLOUDS_BATCH_CONFIG``), environment variables named
``MODACLOUDS_BATCH_<FIELD>`` (upper case) and command-line flags.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "MODACLOUDS_BATCH_"


def _default_home() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/modaclouds-batch")
    return Path.home() / ".local" / "share" / "modaclouds-batch"


# The local admin token's file in the gateway's home: written by the gateway, read by the clients.
ADMIN_TOKEN_FILE = "admin-token"


def default_home() -> Path:
    return _default_home()


def local_token_path(home: Path | None = None) -> Path:
    """Where a gateway with this home (default: the environment's, else the default) keeps its token."""
    if home is None:
        home = Path(os.environ[ENV_PREFIX + "HOME"]) if os.environ.get(ENV_PREFIX + "HOME") else _default_home()
    return Path(home) / ADMIN_TOKEN_FILE


def is_loopback_address(address: str) -> bool:
    """True for an IP literal on the loopback network (127.0.0.0/8, ::1, ::ffff:127.x)."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


@dataclass(frozen=True)
class Settings:
    # Where the gateway keeps its database, job folders and the pool it manages.
    home: Path = field(default_factory=_default_home)
    host: str = "127.0.0.1"
    port: int = 5000
    threads: int = 8
    # Derived from ``home`` when left empty; see ``resolved``.
    db_path: Path | None = None
    jobs_dir: Path | None = None
    pool_dir: Path | None = None
    # The client condor_config the gateway uses; defaults to the one `pool up` writes.
    condor_config: Path | None = None
    # The cached Debian root filesystem for pools on machines without HTCondor.
    rootfs_cache: Path = Path("/var/cache/modaclouds-batch/rootfs-trixie")
    debian_mirror: str | None = None
    collector_port: int = 9618
    schedd_port: int = 9619
    pool_identity: str = "batch"
    uid_domain: str = "gateway.local"
    # Uploads and archives (bytes / members); anything larger is refused.
    max_upload_bytes: int = 1 << 31
    max_unpacked_bytes: int = 1 << 32
    max_archive_members: int = 10_000
    # Bearer tokens on every route but /, /health, /openapi.json and /docs. False only when
    # served on a loopback socket (see docs/access.md): then every caller is the local admin.
    auth: bool = True
    # Per-user defaults; admins override them per user (PUT /users/{name}/limits).
    max_active_jobs_per_user: int = 1000
    submissions_per_minute: int = 10_000
    # Most items in one job array (one HTCondor cluster).
    max_array_items: int = 10_000
    # Finished jobs' records and artifacts are cleaned up after this many seconds (0: never).
    job_retention_seconds: int = 30 * 24 * 3600
    # Infrastructure API: seconds a collector answer is reused; an operator's provider command.
    pool_cache_seconds: float = 3.0
    worker_provider_command: str | None = None
    # Log lines as JSON (default) or plain text.
    log_format: str = "json"
    # Seconds between two tracker cycles.
    tracker_interval: float = 2.0
    # Absolute base URL used in links sent to webhook receivers; derived when empty.
    public_url: str | None = None
    webhook_secret: str | None = None
    # Seconds one delivery attempt may take in all (connect, send, the answer's headers).
    webhook_timeout: float = 10.0
    webhook_give_up_after: float = 24 * 3600.0
    # Whether webhook receivers may be private or loopback addresses (an operator's choice).
    webhook_allow_private: bool = False
    # Retry schedule: exponential from this many seconds, capped, with jitter.
    webhook_backoff_initial: float = 2.0
    webhook_backoff_max: float = 600.0
    webhook_workers: int = 4
    # Live stdout/stderr of running jobs (HTCondor streams them into the schedd's spool, which
    # the gateway reads). None: on when the gateway runs the pool `pool up` made (its spool is
    # on this host); false for a schedd whose spool the gateway cannot read.
    live_output: bool | None = None
    # GET /jobs/events: open streams at once (each holds a request thread), seconds between
    # keep-alive comments, and seconds before a stream ends (clients resume with Last-Event-ID;
    # 0: send what is there and end).
    max_event_streams: int = 4
    event_stream_heartbeat_seconds: float = 15.0
    event_stream_max_seconds: float = 300.0
    # Seconds a queued job of this gateway with neither a job row nor a submission intent is
    # left alone before the tracker removes it as an orphan.
    orphan_grace_seconds: float = 120.0
    # Host names the gateway answers to besides its host, localhost, 127.0.0.1, ::1 and the
    # public_url's host (comma-separated); checked when served on loopback or with auth off.
    allowed_hosts: str = ""
    # With auth on, write a local admin token to <home>/admin-token (0600) at first start.
    local_admin_token: bool = True
    # Archive validation: threads for all users, validations one user may run at once (429 past it).
    archive_validation_workers: int = 4
    archive_validations_per_user: int = 2
    # What a job bundle (code) may unpack to; inputs and data objects keep max_unpacked_bytes.
    max_bundle_unpacked_bytes: int = 1 << 28
    # Seconds a worker the gateway added may be missing from the collector before
    # /workers/requests marks it lost (a pool restart, a VM that died); 'ready' again if it returns.
    worker_lost_after: float = 120.0
    # Most deliveries in flight at once to one receiver host (so a slow one cannot hold all senders).
    webhook_host_concurrency: int = 2
    # Refused requests (401, 403, 429, 404 on another user's id) audited per client address
    # and status each minute; the rest are counted in the next entry.
    audit_refusals_per_minute: int = 60
    # Most deliveries in flight at once for one user's jobs, whatever hosts they go to.
    webhook_owner_concurrency: int = 2
    # Seed 003 (/mecrm): the largest data object its /data takes (the seed's server: 16 MiB),
    # and how long GET /mecrm/worker/contract waits for a match before answering 204.
    dialect_003_max_data_bytes: int = 16 * 1024 * 1024
    dialect_003_contract_wait_seconds: float = 30.0
    # Request bodies that are not file uploads (JSON, urlencoded, a form field): bytes; larger is 413.
    max_body_bytes: int = 1 << 20
    # One job's (or array item's) arguments: how many words, and their total UTF-8 bytes.
    max_arguments: int = 4096
    max_argument_bytes: int = 64 * 1024
    # Data ids one job may name in job-input-ids (and in a command job's input_files).
    max_input_ids: int = 32
    # Per-user default: input bytes the user's active jobs may hold in the schedd's spool,
    # where every job and every array item keeps its own copy; admins override it per user.
    max_spool_bytes_per_user: int = 64 << 30
    # Bytes one job may send back at exit (output.tar.gz, and stdout/stderr unless streamed
    # live); HTCondor holds a job past it (max_transfer_output_mb, rounded up to whole MiB).
    max_output_bytes: int = 1 << 31
    # Folders on the gateway's machine (comma-separated) that TES tasks may read file:// inputs
    # from and write file:// outputs into; empty: the TES door refuses file:// URLs.
    tes_file_folders: str = ""
    # Seconds a user's previous webhook secret keeps signing after they rotate it (0: stops at once).
    webhook_secret_overlap_seconds: float = 24 * 3600.0
    # A receiver answering 400, 401, 403, 404, 405, 413 or 422 this many times in a row stops
    # the notification's delivery (410 Gone stops it at once).
    webhook_permanent_failure_attempts: int = 3
    # How long a submission's Idempotency-Key is remembered: a retry with it within this many
    # seconds gets the first answer instead of a second job (docs/api.md).
    idempotency_window_seconds: int = 86400
    # Seed 000 (/slots): seconds a slot lease (worker-id) stays usable; leases and leased jobs
    # or transfers active at once (each open /slots request holds one of ``threads``); the pace
    # of a leased upload or download in bytes per second (0: as fast as the disk goes).
    slot_lease_seconds: float = 300.0
    max_leased_slots: int = 4
    slot_transfer_bytes_per_second: int = 0
    # The managed pool's daemons listen on a bridge of this machine (10.<port/256>.<port%256>.1)
    # instead of loopback, so that simulated hosts (`pool host add`) can join it (root only).
    pool_bridge: bool = False
    # The managed pool's leases (HTCondor's defaults): seconds a running job whose execute node
    # is lost waits before it is requeued, and seconds a silent node's ads stay in the collector.
    pool_job_lease_seconds: int = 2400
    pool_ad_lifetime_seconds: int = 900
    # The managed pool's daemons run on a simulated host of their own (a network namespace on the
    # pool's bridge, address .254), so a gateway on this machine reaches its schedd over a network.
    pool_namespace: bool = False
    # Seconds between two full tracker cycles (every job's ad read); between them a cycle reads
    # only the jobs whose status changed. 0: every cycle is a full one.
    tracker_reconcile_interval: float = 60.0

    def resolved(self) -> "Settings":
        """Fill the paths derived from ``home``; idempotent."""
        home = Path(self.home)
        pool_dir = Path(self.pool_dir) if self.pool_dir else home / "pool"
        return dataclasses.replace(
            self,
            home=home,
            db_path=Path(self.db_path) if self.db_path else home / "gateway.db",
            jobs_dir=Path(self.jobs_dir) if self.jobs_dir else home / "jobs",
            pool_dir=pool_dir,
            condor_config=(
                Path(self.condor_config)
                if self.condor_config
                else pool_dir / "client" / "condor_config"
            ),
            rootfs_cache=Path(self.rootfs_cache),
        )

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def listens_on_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")

    @property
    def manages_pool(self) -> bool:
        """True when the gateway talks to the pool `pool up` made (not an external one)."""
        return Path(self.condor_config) == Path(self.pool_dir) / "client" / "condor_config"

    @property
    def live_output_enabled(self) -> bool:
        return self.live_output if self.live_output is not None else self.manages_pool

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth)

    @property
    def admin_token_path(self) -> Path:
        return local_token_path(Path(self.home))

    @property
    def host_names(self) -> frozenset[str]:
        """The names a request's Host may carry on a loopback gateway."""
        names = {"localhost", "127.0.0.1", "::1", *self.proxy_names}
        if self.host not in ("0.0.0.0", "::", ""):
            names.add(self.host.lower().strip("[]"))
        return frozenset(names)

    @property
    def proxy_names(self) -> frozenset[str]:
        """Names the gateway is reached by through a proxy: ``allowed_hosts`` and the ``public_url``'s host.

        A browser's Origin may carry them whatever its port; other origins must be the request's own.
        """
        names = [n.strip() for n in self.allowed_hosts.split(",")]
        if self.public_url:
            from urllib.parse import urlsplit

            names.append(urlsplit(self.public_url).hostname or "")
        return frozenset(n.lower().strip("[]") for n in names if n)

    @property
    def tes_folders(self) -> tuple[Path, ...]:
        """``tes_file_folders`` as real paths."""
        return tuple(Path(os.path.realpath(f.strip())) for f in self.tes_file_folders.split(",") if f.strip())

    @property
    def private_webhooks_allowed(self) -> bool:
        return bool(self.webhook_allow_private)


def _coerce(name: str, raw: Any) -> Any:
    """Turn a string (or TOML value) into the type the field expects."""
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if raw is None:
        return None
    if "Path" in kind:
        return Path(raw)
    if kind.startswith("bool"):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true or false, got {raw!r}")
    if kind.startswith("int"):
        return int(raw)
    if kind.startswith("float"):
        return float(raw)
    return str(raw)


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Build settings from a TOML file, the environment and explicit overrides."""
    environ = os.environ if environ is None else environ
    names = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}

    config_file = config_file or (
        Path(environ[ENV_PREFIX + "CONFIG"]) if environ.get(ENV_PREFIX + "CONFIG") else None
    )
    if config_file:
        with open(config_file, "rb") as fh:
            data = tomllib.load(fh)
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{config_file}: unknown settings {sorted(unknown)}")
        values.update({k: _coerce(k, v) for k, v in data.items()})

    for name in names:
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ and environ[env_name] != "":
            values[name] = _coerce(name, environ[env_name])

    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value)

    return Settings(**values).resolved()
