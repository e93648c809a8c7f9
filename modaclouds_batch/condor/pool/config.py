"""Render the pool's configuration files: pure functions of their inputs, no I/O.

Two files come out of here:

- the *daemon config* one condor_master is started with (``CONDOR_CONFIG``). A role says
  which daemons that master runs: ``"all"`` (central manager + submit + execute, the
  single-node pool) or ``"execute"`` (a startd only, joining the same pool under its own
  name; lets a later change add execute nodes without touching the main one);
- the *client config* the gateway process reads (``settings.condor_config``).

Why the knobs are what they are is said next to them, in the rendered file itself, so an
operator reading the file on disk gets the reasons too.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

ROLES = ("all", "execute")
# The schedd's global job event log, in the node's LOG folder.
EVENT_LOG_NAME = "EventLog"
LOOPBACK = "127.0.0.1"

# Cores the startd advertises, whatever the machine has: jobs of this gateway are mostly
# small scripts that wait on I/O, and tests need ~8 of them running at once on a 2-core
# machine. One partitionable slot of that size serves 8 one-core jobs at once and still
# lets a job ask for request_cpus = 4 (static 1-core slots never could).
DEFAULT_NUM_CPUS = 8
# What the execute node can run; jobs may require one (`GatewayRuntimes`).
DEFAULT_RUNTIMES = ("bash", "python3")
# Set in a job's environment when it runs as a dedicated execute account (launcher.sh).
DEDICATED_ACCOUNT_ENV = "MODACLOUDS_BATCH_DEDICATED_ACCOUNT"
# The identity (before @UID_DOMAIN) of execute nodes on other hosts: their IDTOKEN (issued
# by `pool token --execute-node`) lets them advertise a startd and a master, and read.
EXECUTE_NODE_IDENTITY = "execute-node"
EXECUTE_NODE_AUTHZ = ("ADVERTISE_STARTD", "ADVERTISE_MASTER", "READ")
# HTCondor's own defaults, which the managed pool keeps unless told otherwise: a running
# job's shadow waits this long for a lost execute node before the job is requeued (40 min
# rides out a network blip or a schedd restart without losing the running job), and the
# collector forgets a silent daemon's ads after this long (15 min).
DEFAULT_JOB_LEASE_SECONDS = 2400
DEFAULT_AD_LIFETIME_SECONDS = 900


@dataclass(frozen=True)
class NodeConfig:
    """Everything one daemon config depends on."""

    role: str
    node: str
    local_dir: Path
    password_dir: Path
    system_token_dir: Path
    uid_domain: str
    pool_identity: str
    collector_port: int = 9618
    schedd_port: int = 9619
    num_cpus: int = DEFAULT_NUM_CPUS
    runtimes: tuple[str, ...] = DEFAULT_RUNTIMES
    # The installation's own config, read first so that its paths (RELEASE_DIR, LIBEXEC...)
    # hold; every setting below overrides it. None when there is none to read.
    base_config: Path | None = None
    # The Unix accounts this node's dynamic slots run jobs as, one per slot (see
    # execute_accounts()); empty when the daemons cannot switch users (not root), and
    # every job then runs as whoever started the pool.
    execute_accounts: tuple[str, ...] = ()
    # Network: the address this node's daemons listen on and the central manager's. Both
    # loopback for a single-machine pool; a pool with simulated hosts listens on its bridge.
    address: str = LOOPBACK
    central_manager: str = LOOPBACK
    # Host pattern (``10.1.2.*``) from which execute nodes holding the execute-node token
    # may join (central manager only); None: no node from another host may.
    remote_nodes: str | None = None
    # A node on a host of its own (a simulated host, or another machine): its name there.
    # Its daemons then prove themselves with its token alone, never FS.
    host_name: str | None = None
    # See DEFAULT_JOB_LEASE_SECONDS and DEFAULT_AD_LIFETIME_SECONDS.
    job_lease_seconds: int = DEFAULT_JOB_LEASE_SECONDS
    ad_lifetime_seconds: int = DEFAULT_AD_LIFETIME_SECONDS

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {self.role!r}")
        if not self.node.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"node name must be alphanumeric (with - or _), not {self.node!r}")
        if any("," in r or '"' in r or not r for r in self.runtimes):
            raise ValueError(f"runtime names cannot be empty or hold ',' or '\"': {self.runtimes!r}")
        if self.execute_accounts and len(self.execute_accounts) < self.num_cpus:
            # A dynamic slot takes at least one core, so there are at most num_cpus of them.
            raise ValueError(f"{self.num_cpus} cores need {self.num_cpus} execute accounts, "
                             f"not {len(self.execute_accounts)}")
        if any(not ACCOUNT_NAME.fullmatch(a) for a in self.execute_accounts):
            raise ValueError(f"execute accounts must be Unix user names: {self.execute_accounts!r}")
        for what in ("address", "central_manager"):
            ipaddress.IPv4Address(getattr(self, what))  # ValueError names the bad value
        if self.remote_nodes is not None and not HOST_PATTERN.fullmatch(self.remote_nodes):
            raise ValueError(f"remote_nodes must be a host pattern such as 10.1.2.*, not {self.remote_nodes!r}")
        if self.host_name is not None and (self.role != "execute" or not HOST_NAME.fullmatch(self.host_name)):
            raise ValueError(f"host_name is for execute nodes and must be a plain host name, not {self.host_name!r}")
        if self.job_lease_seconds < 1 or self.ad_lifetime_seconds < 1:
            raise ValueError("job_lease_seconds and ad_lifetime_seconds must be at least 1")


# A host pattern in an ALLOW list: an address whose trailing parts may be a star.
HOST_PATTERN = re.compile(r"[0-9]{1,3}(\.([0-9]{1,3}|\*)){3}")
HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")


# What useradd accepts (Debian's default NAME_REGEX, 32 characters at most).
ACCOUNT_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def execute_accounts(pool_identity: str, node: str, num_cpus: int) -> tuple[str, ...]:
    """The accounts the dynamic slots of ``node`` run jobs as: ``<identity>-<node>-<n>``.

    One per dynamic slot, so no two running jobs ever share a Unix user, and of this node
    only, so that a node's DEDICATED_EXECUTE_ACCOUNT_REGEXP never matches another's.
    """
    names = tuple(f"{pool_identity}-{node}-{n}".lower() for n in range(1, num_cpus + 1))
    too_long = [name for name in names if not ACCOUNT_NAME.fullmatch(name)]
    if too_long:
        raise ValueError(f"execute account {too_long[-1]!r} is not a valid Unix user name "
                         f"(at most 32 of a-z, 0-9, - and _): choose a shorter pool_identity")
    return names


_SLOT_USER_LINE = re.compile(r"^SLOT1_[0-9]+_USER = (\S+)$", re.MULTILINE)


def configured_execute_accounts(daemon_config_text: str) -> tuple[str, ...]:
    """The execute accounts a rendered daemon config names (to delete with its node)."""
    return tuple(_SLOT_USER_LINE.findall(daemon_config_text))


def _execute_account_lines(cfg: NodeConfig) -> list[str]:
    if not cfg.execute_accounts:
        return [
            "## Execute accounts: none (the daemons run unprivileged, so every job runs as the",
            "## user who started the pool and jobs are not isolated from each other).",
            "",
        ]
    prefix = cfg.execute_accounts[0].rsplit("-", 1)[0]
    lines = [
        "## Execute accounts: every dynamic slot runs its job as a Unix account of its own,",
        "## never as the job's Owner. Spooled files (job dirs in SPOOL are 0700, owned by the",
        "## Owner) and other jobs' sandboxes (execute/dir_*, 0700, owned by their slot's",
        "## account) are then closed to a job. Dynamic slots are named slot1_<n>, n from 1,",
        "## lowest free first, and each takes at least one core: one account per core.",
        "STARTER_ALLOW_RUNAS_OWNER = False",
    ]
    lines += [f"SLOT1_{n}_USER = {name}" for n, name in enumerate(cfg.execute_accounts, start=1)]
    lines += [
        "# These accounts are used by nothing else: at a job's end the starter kills every",
        "# process they own, so nothing a job left running meets the slot's next job.",
        f"DEDICATED_EXECUTE_ACCOUNT_REGEXP = {re.escape(prefix)}-[0-9]+",
        "# The launcher, told so, removes what the previous job of its account left in the",
        "# shared temporary folders (/tmp, /var/tmp, /dev/shm, /run/lock) before the job starts.",
        f'STARTER_JOB_ENVIRONMENT = "{DEDICATED_ACCOUNT_ENV}=1"',
        "",
    ]
    return lines


def _daemon_list(role: str) -> str:
    if role == "all":
        return "MASTER COLLECTOR NEGOTIATOR SCHEDD STARTD"
    return "MASTER STARTD"


def render_daemon_config(cfg: NodeConfig) -> str:
    """The text of one node's daemon config."""
    ident = lambda user: f"{user}@$(UID_DOMAIN)/{cfg.address}"  # noqa: E731
    lines = ["# Generated by `modaclouds-batch pool up`; rewritten whenever it starts the pool.", ""]
    if cfg.base_config is not None:
        lines += [
            "# Paths of the installation (binaries, libexec) come from its own main file. Its",
            "# local config files are read after the whole of this file would be, overriding",
            "# it (the packages' config.d sets ALLOW_WRITE = *): they are not read at all.",
            f"include : {cfg.base_config}",
            "LOCAL_CONFIG_DIR =",
            "LOCAL_CONFIG_FILE =",
            "REQUIRE_LOCAL_CONFIG_FILE = False",
            "",
        ]
    lines += [
        *_network_lines(cfg),
        "BIND_ALL_INTERFACES = False",
        "USE_SHARED_PORT = False",
        "ENABLE_IPV6 = False",
        "# No mail: there is no mailer, and nobody to read it.",
        "CONDOR_ADMIN =",
        "",
        f"## Role: {cfg.role}",
        f"DAEMON_LIST = {_daemon_list(cfg.role)}",
    ]
    if cfg.role == "all":
        lines += [
            f"SCHEDD_ARGS = -p {cfg.schedd_port}",
            "# Leases: a running job whose execute node is lost goes back to idle after",
            "# JobLeaseDuration; a silent node's ads leave the collector after CLASSAD_LIFETIME.",
            f"JOB_DEFAULT_LEASE_DURATION = {cfg.job_lease_seconds}",
            f"CLASSAD_LIFETIME = {cfg.ad_lifetime_seconds}",
        ]
    elif cfg.host_name:
        lines += [
            "# A host of its own: its master and startd carry the host's name (NETWORK_HOSTNAME).",
            "# A graceful drain (retiring the host) lets running jobs finish: HTCondor gives them",
            "# this retirement time, 0 by default, which would evict them at once.",
            "MAXJOBRETIREMENTTIME = 24 * 3600",
        ]
    else:
        lines += [
            "# A second master and startd on this machine: their own names keep their ads apart.",
            f"MASTER_NAME = {cfg.node}",
            f"STARTD_NAME = {cfg.node}",
            "# Not a child of the main node's master: it must not offer that family's session.",
            "SEC_USE_FAMILY_SESSION = False",
        ]
    lines += [
        "",
        "## State: this node's own folders under the pool folder (never the installation's).",
        f"LOCAL_DIR = {cfg.local_dir}",
        "LOG = $(LOCAL_DIR)/log",
        "SPOOL = $(LOCAL_DIR)/spool",
        "EXECUTE = $(LOCAL_DIR)/execute",
        "LOCK = $(LOCAL_DIR)/lock",
        "RUN = $(LOCAL_DIR)/run",
        "CRED_STORE_DIR = $(LOCAL_DIR)/cred_dir",
        "# Every job's events in one file, which the gateway follows to hear of a change at",
        "# once (condor/events.py) instead of at its next poll.",
        f"EVENT_LOG = $(LOG)/{EVENT_LOG_NAME}",
        "# The pool signing key (made by the collector at first start) and daemon tokens.",
        f"SEC_PASSWORD_DIRECTORY = {cfg.password_dir}",
        "SEC_TOKEN_POOL_SIGNING_KEY_FILE = $(SEC_PASSWORD_DIRECTORY)/POOL",
        f"SEC_TOKEN_SYSTEM_DIRECTORY = {cfg.system_token_dir}",
        "",
        "## Sandbox: this machine forbids unshare(); without these jobs fail to start",
        '## ("Failed to unshare the mount namespace").',
        "MOUNT_UNDER_SCRATCH =",
        "USE_PID_NAMESPACES = False",
        "",
        "## Speed: seconds, not minutes, from submit to running and from change to report.",
        "NEGOTIATOR_INTERVAL = 2",
        "NEGOTIATOR_MIN_INTERVAL = 1",
        "NEGOTIATOR_CYCLE_DELAY = 1",
        "SCHEDD_INTERVAL = 2",
        "SCHEDD_MIN_INTERVAL = 1",
        "UPDATE_INTERVAL = 2",
        "MASTER_UPDATE_INTERVAL = 10",
        "STARTER_INITIAL_UPDATE_INTERVAL = 2",
        "STARTER_UPDATE_INTERVAL = 5",
        "SHADOW_QUEUE_UPDATE_INTERVAL = 5",
        "JOB_START_DELAY = 0",
        "# No CPU benchmarks at startd start: ~10 s of both cores for numbers nobody reads,",
        "# and a startd that is benchmarking delays a fast shutdown until they finish.",
        "RunBenchmarks = False",
        "BENCHMARKS_JOBLIST =",
        "",
        "## Policy: run whatever matches, never preempt or kill. The startd never suspends on",
        "## its own (SUSPEND = False); WANT_SUSPEND = True makes a future SUSPEND policy suspend",
        "## rather than evict. Suspension asked for through the schedd (schedd.act Suspend /",
        "## Continue) goes schedd -> shadow -> starter and works whatever these say.",
        "START = True",
        "SUSPEND = False",
        "CONTINUE = True",
        "PREEMPT = False",
        "KILL = False",
        "WANT_SUSPEND = True",
        "WANT_VACATE = False",
        "RANK = 0",
        "PREEMPTION_REQUIREMENTS = False",
        "NEGOTIATOR_CONSIDER_PREEMPTION = False",
        "",
        f"## Slots: {cfg.num_cpus} cores advertised in one partitionable slot (see config.py).",
        f"NUM_CPUS = {cfg.num_cpus}",
        "NUM_SLOTS = 1",
        "NUM_SLOTS_TYPE_1 = 1",
        "SLOT_TYPE_1 = 100%",
        "SLOT_TYPE_1_PARTITIONABLE = True",
        "",
        *_execute_account_lines(cfg),
        "## What jobs may require of this node.",
        f'GatewayRuntimes = "{",".join(cfg.runtimes)}"',
        "STARTD_ATTRS = $(STARTD_ATTRS) GatewayRuntimes",
        "",
        "## Security: every command authenticated (FS for local daemons and root, IDTOKENS",
        "## signed by this pool's key for the gateway), encrypted, and allowed by name.",
        f"UID_DOMAIN = {cfg.uid_domain}",
        f"FILESYSTEM_DOMAIN = {cfg.uid_domain}",
        "TRUST_UID_DOMAIN = True",
        "SEC_DEFAULT_AUTHENTICATION = REQUIRED",
        "SEC_DEFAULT_ENCRYPTION = REQUIRED",
        "SEC_DEFAULT_INTEGRITY = REQUIRED",
        "SEC_READ_AUTHENTICATION = REQUIRED",
        "SEC_READ_ENCRYPTION = OPTIONAL",
        "SEC_READ_INTEGRITY = OPTIONAL",
        "SEC_DEFAULT_AUTHENTICATION_METHODS = FS, IDTOKENS",
        *(_host_security_lines(cfg, ident) if cfg.host_name else _pool_security_lines(cfg, ident)),
        "",
    ]
    return "\n".join(lines)


def _network_lines(cfg: NodeConfig) -> list[str]:
    if cfg.address == LOOPBACK and cfg.central_manager == LOOPBACK:
        heading = "## Network: one machine, loopback only, fixed ports, no shared port."
    else:
        heading = ("## Network: this node's own address only (a bridge of this machine, or a host's),"
                   " never every interface; fixed ports, no shared port.")
    lines = [
        heading,
        f"CONDOR_HOST = {cfg.central_manager}",
        f"COLLECTOR_HOST = {cfg.central_manager}:{cfg.collector_port}",
        f"NETWORK_INTERFACE = {cfg.address}",
    ]
    if cfg.host_name:
        lines.append(f"NETWORK_HOSTNAME = {cfg.host_name}")
    return lines


def _pool_security_lines(cfg: NodeConfig, ident) -> list[str]:
    lines = [
        "SEC_CLIENT_AUTHENTICATION_METHODS = FS, IDTOKENS",
        "# The gateway's identity administers the pool too: it drains workers for admins.",
        f"ALLOW_ADMINISTRATOR = {ident('root')} {ident('condor')} {ident(cfg.pool_identity)}",
        f"ALLOW_DAEMON = {ident('condor')} {ident('root')}",
        f"ALLOW_NEGOTIATOR = {ident('condor')}",
        f"ALLOW_WRITE = $(ALLOW_DAEMON) {ident(cfg.pool_identity)}",
        *_read_lines(cfg),
    ]
    if cfg.remote_nodes:
        node = f"{EXECUTE_NODE_IDENTITY}@$(UID_DOMAIN)/{cfg.remote_nodes}"
        gateway = f"{cfg.pool_identity}@$(UID_DOMAIN)/{cfg.remote_nodes}"
        lines += [
            "# Execute nodes on other hosts join with the execute-node token: they may advertise",
            "# their startd and master and read, nothing else (claims and file transfer then go",
            "# through the claim's own security session).",
            f"ALLOW_ADVERTISE_STARTD = $(ALLOW_DAEMON) {node}",
            f"ALLOW_ADVERTISE_MASTER = $(ALLOW_DAEMON) {node}",
            f"ALLOW_READ = $(ALLOW_READ) {node}",
            "# The gateway may be on another host of the pool's subnet (the pool on a host of its",
            "# own): with the gateway's token, it is the gateway.",
            f"ALLOW_WRITE = $(ALLOW_WRITE) {gateway}",
            f"ALLOW_READ = $(ALLOW_READ) {gateway}",
            f"ALLOW_ADMINISTRATOR = $(ALLOW_ADMINISTRATOR) {gateway}",
        ]
    return lines


def _host_security_lines(cfg: NodeConfig, ident) -> list[str]:
    gateway = f"{cfg.pool_identity}@$(UID_DOMAIN)/{cfg.central_manager}"
    return [
        "# A host of its own: its daemons prove themselves to the pool with its token only;",
        "# FS stays for root on this host (a local condor_drain or condor_off).",
        "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS",
        "# The gateway may administer and read this node once the node can check its token",
        "# (that needs the pool signing key here, which a node joining by token does not have).",
        f"ALLOW_ADMINISTRATOR = {ident('root')} {ident('condor')} {gateway}",
        f"ALLOW_DAEMON = {ident('condor')} {ident('root')}",
        "ALLOW_NEGOTIATOR =",
        "ALLOW_WRITE = $(ALLOW_DAEMON)",
        f"ALLOW_READ = $(ALLOW_DAEMON) {gateway}",
    ]


def _read_lines(cfg: NodeConfig) -> list[str]:
    if not cfg.execute_accounts:
        return [f"ALLOW_READ = *@$(UID_DOMAIN)/{cfg.address}"]
    return [
        "# Not the execute accounts: a job authenticates as its account (FS) on loopback,",
        "# and the queue's job ads (every user's job names, owners, folders) are not its own.",
        "ALLOW_READ = $(ALLOW_WRITE)",
    ]


def render_client_config(*, collector_port: int, token_dir: Path, address: str = LOOPBACK,
                         job_lease_seconds: int = DEFAULT_JOB_LEASE_SECONDS, event_log: Path | None = None) -> str:
    """The gateway's client config: where the pool is, which token proves who we are, and
    the schedd's event log the gateway follows (``event_log``; the same path inside and
    outside the chroot).

    IDTOKENS only: the gateway must act as the pool identity of its token, never as the
    local user it happens to run as (FS would make it root, which may not own jobs).
    """
    return "\n".join(
        [
            "# Generated by `modaclouds-batch pool up`: the gateway's view of the managed pool.",
            f"CONDOR_HOST = {address}",
            f"COLLECTOR_HOST = {address}:{collector_port}",
            "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS",
            "# Token files here must not be readable by others, or they are silently ignored.",
            f"SEC_TOKEN_DIRECTORY = {token_dir}",
            "# Jobs the gateway submits carry the pool's job lease (JobLeaseDuration).",
            f"JOB_DEFAULT_LEASE_DURATION = {job_lease_seconds}",
            *(["# The schedd's job event log: the tracker follows it (condor/events.py).",
               f"GATEWAY_SCHEDD_EVENT_LOG = {event_log}"] if event_log else []),
            "",
        ]
    )
