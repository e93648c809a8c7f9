"""The single-node HTCondor pool the gateway submits to: `up`, `down`, `status`, `token`.

One node runs every role (collector, negotiator, schedd, startd) on 127.0.0.1. Its
daemons come from the host's HTCondor when ``condor_master`` is on PATH ("local" mode),
else from a cached Debian 13 root filesystem run in a chroot ("chroot" mode, root only).
All runtime state lives under ``settings.pool_dir``; see docs/operations.md, "The pool".

The gateway talks to the pool with ``CONDOR_CONFIG=settings.condor_config`` (written by
`up`), which authenticates with the IDTOKEN `up` stores beside it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import credentials, daemons, host, netns, probe, rootfs
from .config import (DEFAULT_NUM_CPUS, EXECUTE_NODE_AUTHZ, EXECUTE_NODE_IDENTITY, LOOPBACK, NodeConfig,
                     execute_accounts, render_daemon_config)
from .errors import PoolError
from .layout import MAIN_NODE, PoolLayout
from .locking import exclusive
from .runtime import (CHROOT, LOCAL, ChrootRuntime, LocalRuntime, execute_uid_base, find_condor_master,
                      select_mode)

__all__ = ["PoolError", "PoolStatus", "up", "down", "status", "token", "execute_node_token", "pool_address",
           "render_daemon_config"]

log = logging.getLogger(__name__)

Say = Callable[[str], None]

# How long `up` waits for each stage before naming the log to read.
READY_TIMEOUT = 60.0
KEY_TIMEOUT = 30.0
# Free space the pool folder needs for logs, spool and a few jobs' sandboxes.
POOL_DIR_BYTES = 200 * host.MB


@dataclass
class PoolStatus:
    running: bool
    mode: str
    master_pid: int | None
    daemon_config: Path
    client_config: Path
    log_dir: Path
    collector: str
    schedd: str | None
    slots_total: int
    slots_free: int
    token_file: Path
    rootfs: Path | None = None
    # Why a running pool does not fully answer (None when all is well or it is stopped).
    problem: str | None = None

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


# --- the API ------------------------------------------------------------------------------


def up(settings, log: Say = print) -> PoolStatus:
    """Start the pool unless it runs, write the gateway's client config and token, and
    return once the collector, the schedd and at least one slot answer. Idempotent."""
    layout = PoolLayout.from_settings(settings)
    mode = select_mode(find_condor_master(), os.geteuid())
    started = time.monotonic()
    with exclusive(layout.lock_file):
        runtime = _runtime(mode, settings, layout, build=True, say=log)
        if bridged(settings):
            net = netns.PoolNetwork(settings.collector_port)
            netns.ensure_bridge(net, log)
            if settings.pool_namespace and net.namespace(POOL_HOST) not in netns.namespaces(net):
                netns.add_namespace(net, POOL_HOST, POOL_HOST_NUMBER, log)
        pid = daemons.running_master(layout)
        if pid:
            log(f"pool already running (condor_master pid {pid})")
        else:
            pid = _start(runtime, settings, layout, log)
        _save_state(layout, mode=mode, master_pid=pid, rootfs=getattr(runtime, "rootfs", None))
        credentials.write_client_config(layout, settings.collector_port, pool_address(settings),
                                        settings.pool_job_lease_seconds)
        credentials.ensure_token(runtime, layout, _identity(settings), log, timeout=KEY_TIMEOUT)
        obs = probe.probe(layout.client_config, wait=READY_TIMEOUT)
        if not probe.is_ready(obs):
            raise PoolError(_not_ready_message(obs, layout, pid))
    log(f"pool up in {time.monotonic() - started:.1f} s: {obs['slots_free']}/{obs['slots_total']} "
        f"slots free, schedd {obs['schedd']['name']}")
    return _status(settings, layout, mode, pid, obs, getattr(runtime, "rootfs", None))


def down(settings, log: Say = print) -> None:
    """Stop the condor_master `up` started (by pid) and everything below it; unmount."""
    layout = PoolLayout.from_settings(settings)
    with exclusive(layout.lock_file):
        state = _load_state(layout)
        mode = state.get("mode") or _guess_mode()
        runtime = _runtime(mode, settings, layout, build=False, say=log)
        if bridged(settings) or (layout.pool_dir / "hosts").is_dir():
            from .hosts import remove_all

            remove_all(settings, log)
        for node in _extra_nodes(layout):
            node_pid = daemons.running_master(layout, node)
            if node_pid:
                log(f"stopping execute node {node} (condor_master pid {node_pid})")
                daemons.stop_master(node_pid, log)
        pid = daemons.running_master(layout)
        if pid:
            log(f"stopping condor_master pid {pid} (fast shutdown)")
            daemons.stop_master(pid, log)
        else:
            log("no condor_master of this pool is running")
        daemons.kill_leftovers(runtime, log)
        runtime.release(log)
        if bridged(settings) and netns.host_tools_present():
            net = netns.PoolNetwork(settings.collector_port)
            netns.remove_namespace(net, POOL_HOST, log)
            netns.remove_bridge(net, log)
        if state:
            _save_state(layout, mode=mode, master_pid=None, rootfs=state.get("rootfs"))


def status(settings) -> PoolStatus:
    """What runs and where; asks the pool only when its master is alive. No side effects."""
    layout = PoolLayout.from_settings(settings)
    state = _load_state(layout)
    mode = state.get("mode") or _guess_mode()
    pid = daemons.running_master(layout)
    obs = probe.probe(layout.client_config) if pid and layout.client_config.exists() else None
    rootfs_path = Path(state["rootfs"]) if state.get("rootfs") else None
    return _status(settings, layout, mode, pid, obs, rootfs_path)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def token(settings, log: Say = _to_stderr) -> str:
    """The gateway's IDTOKEN text; brings the pool up first when there is none yet.

    Progress goes to stderr by default: stdout is for the token (`pool token > file`)."""
    layout = PoolLayout.from_settings(settings)
    text = credentials.read_token(layout)
    if text and credentials.token_is_current(layout):
        return text
    up(settings, log=log)
    text = credentials.read_token(layout)
    if not text:
        raise PoolError(f"no token at {layout.client_token} after `pool up`")
    return text


# The simulated host a pool with pool_namespace runs its own daemons on (netns.py).
POOL_HOST, POOL_HOST_NUMBER = "pool", netns.LAST_HOST


def bridged(settings) -> bool:
    """Does the pool have a bridge (for simulated hosts, or for its own namespace)?"""
    return bool(settings.pool_bridge or settings.pool_namespace)


def pool_address(settings) -> str:
    """Where the pool's collector and schedd listen: loopback; the pool's bridge when it has
    simulated hosts; or its own simulated host's address with pool_namespace (see netns.py)."""
    net = netns.PoolNetwork(settings.collector_port)
    if settings.pool_namespace:
        return net.host_address(POOL_HOST_NUMBER)
    if settings.pool_bridge:
        return net.bridge_address
    return LOOPBACK


def execute_node_token(settings) -> str:
    """A new IDTOKEN for execute nodes on other hosts (``execute-node@<uid_domain>``), limited
    to what a node needs to join: advertise its startd and master, and read. Needs the pool
    to have run (its signing key); never the gateway's token, which administers the pool."""
    layout = PoolLayout.from_settings(settings)
    state = _load_state(layout)
    if not state.get("mode") or not layout.signing_key.exists() or not daemons.running_master(layout):
        raise PoolError("the pool is not running (its tools and signing key are needed); "
                        "`modaclouds-batch pool up` first")
    runtime = _runtime(state["mode"], settings, layout, build=False, say=_to_stderr)
    identity = f"{EXECUTE_NODE_IDENTITY}@{settings.uid_domain}"
    return credentials.create_token(runtime, layout, identity, EXECUTE_NODE_AUTHZ, "an execute node's token")


# --- the steps ----------------------------------------------------------------------------


def _extra_nodes(layout: PoolLayout) -> list[str]:
    """Execute nodes added beside the main one (each has a condor_config.<node>)."""
    names = (p.name.split(".", 1)[1] for p in layout.state_dir.glob("condor_config.*"))
    return sorted(n for n in names if n != MAIN_NODE)


def _identity(settings) -> str:
    return f"{settings.pool_identity}@{settings.uid_domain}"


def _guess_mode() -> str:
    return LOCAL if find_condor_master() else CHROOT


def _runtime(mode: str, settings, layout: PoolLayout, build: bool, say: Say):
    if mode == LOCAL:
        master = find_condor_master()
        if not master:
            raise PoolError("this pool was started from a local HTCondor, but condor_master "
                            "is no longer on PATH")
        return LocalRuntime(layout, master)
    tree = rootfs.ensure_rootfs(settings.rootfs_cache, settings.debian_mirror, say) if build else None
    if settings.pool_namespace:
        return InNamespace(ChrootRuntime(layout, tree), netns.PoolNetwork(settings.collector_port).namespace(POOL_HOST))
    return ChrootRuntime(layout, tree)


class InNamespace:
    """A runtime whose commands (the daemons above all) run in a network namespace; the rest
    (mounts, folders, accounts) is the wrapped runtime's."""

    def __init__(self, inner, namespace: str):
        self._inner = inner
        self.namespace = namespace

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def command(self, argv: list[str]) -> list[str]:
        return netns.enter(self.namespace, self._inner.command(argv))


def _node_config(settings, layout: PoolLayout, runtime, role: str = "all", node: str = MAIN_NODE,
                 num_cpus: int = DEFAULT_NUM_CPUS, accounts: tuple[str, ...] = ()) -> NodeConfig:
    return NodeConfig(
        role=role,
        node=node,
        local_dir=layout.node_dir(node),
        password_dir=layout.password_dir,
        system_token_dir=layout.system_token_dir,
        uid_domain=settings.uid_domain,
        pool_identity=settings.pool_identity,
        collector_port=settings.collector_port,
        schedd_port=settings.schedd_port,
        base_config=runtime.base_config,
        num_cpus=num_cpus,
        execute_accounts=accounts,
        address=pool_address(settings),
        central_manager=pool_address(settings),
        remote_nodes=netns.PoolNetwork(settings.collector_port).host_pattern if bridged(settings) else None,
        job_lease_seconds=settings.pool_job_lease_seconds,
        ad_lifetime_seconds=settings.pool_ad_lifetime_seconds,
    )


def _prepare_node(runtime, settings, layout: PoolLayout, node: str, num_cpus: int, say: Say) -> tuple[str, ...]:
    """Make a node's folders (the daemons' own) and its slots' execute accounts.

    The log folder holds every finished job's ad (startd_history) and the daemons' logs:
    closed to jobs (0750), which run as execute accounts outside the condor group.
    Returns the accounts the node's config must name (none when not root).
    """
    writable = list(layout.runtime_dirs(node).values())
    for folder in writable:
        folder.mkdir(parents=True, exist_ok=True)
    runtime.chown_to_condor(writable)
    os.chmod(layout.log_dir(node), 0o750)
    try:
        names = execute_accounts(settings.pool_identity, node, num_cpus)
    except ValueError as exc:
        raise PoolError(str(exc)) from exc
    return runtime.ensure_execute_accounts(names, execute_uid_base(settings.collector_port), say)


def _start(runtime, settings, layout: PoolLayout, say: Say) -> int:
    """Prepare folders, mounts and config of the main node, then start its master."""
    layout.pool_dir.mkdir(parents=True, exist_ok=True)
    host.require_free_space(layout.pool_dir, POOL_DIR_BYTES, "for the pool's logs and jobs")
    # A master that died without its daemons (SIGKILL, OOM) leaves them holding the ports.
    daemons.kill_leftovers(runtime, say)
    address = pool_address(settings)
    for what, port in (("collector", settings.collector_port), ("schedd", settings.schedd_port)):
        if host.port_in_use(port, address):
            raise PoolError(f"port {port} (the {what}'s) is taken by another process on {address}; "
                            f"stop it or choose another port (collector_port / schedd_port)")
    runtime.prepare(settings.pool_identity, say)
    for private in (layout.password_dir, layout.system_token_dir):
        private.mkdir(parents=True, exist_ok=True)
        os.chmod(private, 0o700)
    accounts = _prepare_node(runtime, settings, layout, MAIN_NODE, DEFAULT_NUM_CPUS, say)
    layout.daemon_config(MAIN_NODE).write_text(
        render_daemon_config(_node_config(settings, layout, runtime, accounts=accounts)), encoding="utf-8")
    pid = daemons.start_master(runtime, layout, MAIN_NODE)
    say(f"started condor_master pid {pid} ({runtime.mode} mode); logs in {layout.log_dir(MAIN_NODE)}")
    return pid


def _not_ready_message(obs: dict, layout: PoolLayout, pid: int) -> str:
    logs = layout.log_dir(MAIN_NODE)
    if not host.pid_alive(pid):
        return f"condor_master (pid {pid}) exited; read {logs / 'MasterLog'}"
    if not obs["collector"]:
        what, name = "the collector does not answer", "CollectorLog"
    elif not obs["schedd_answers"]:
        what, name = "the schedd does not answer", "SchedLog"
    else:
        what, name = "no startd slot is advertised", "StartLog"
    detail = f" ({obs['error']})" if obs.get("error") else ""
    return f"pool not ready after {READY_TIMEOUT:.0f} s: {what}{detail}; read {logs / name}"


def _status(settings, layout, mode, pid, obs, rootfs_path) -> PoolStatus:
    obs = obs or {}
    schedd = obs.get("schedd") or {}
    problem = None
    if pid and not probe.is_ready(obs or probe.nothing_answers()):
        problem = obs.get("error") or "the pool does not fully answer yet"
    return PoolStatus(
        running=bool(pid),
        mode=mode,
        master_pid=pid,
        daemon_config=layout.daemon_config(MAIN_NODE),
        client_config=layout.client_config,
        log_dir=layout.log_dir(MAIN_NODE),
        collector=f"{pool_address(settings)}:{settings.collector_port}",
        schedd=schedd.get("address"),
        slots_total=int(obs.get("slots_total", 0)),
        slots_free=int(obs.get("slots_free", 0)),
        token_file=layout.client_token,
        rootfs=rootfs_path if mode == CHROOT else None,
        problem=problem,
    )


def _load_state(layout: PoolLayout) -> dict:
    try:
        return json.loads(layout.state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", layout.state_file, exc)
        return {}


def _save_state(layout: PoolLayout, *, mode: str, master_pid: int | None, rootfs) -> None:
    state = {"mode": mode, "master_pid": master_pid, "rootfs": str(rootfs) if rootfs else None,
             "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    layout.state_file.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
