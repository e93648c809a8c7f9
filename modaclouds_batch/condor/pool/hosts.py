"""Simulated hosts: an execute node on a "machine" of its own, for tests and demos (root).

A simulated host is a network namespace with its own address on the pool's bridge (see
netns.py) and its own root filesystem: an overlay of the same cached, read-only Debian
tree, with its own upper layer, accounts, /tmp and LOCAL_DIR under
``<pool_dir>/hosts/<name>/``. Its condor_master runs a startd only, named by the host
(``slot1@<name>``), and joins the pool's collector over the bridge with an IDTOKEN of the
execute-node identity (`pool token --execute-node`): it never sees the pool's signing key,
folders or loopback. That is what a real second machine does (docs/operations.md, "Execute
nodes on other machines"), so what crosses the namespace boundary crosses a network.

The pool must have been brought up with ``pool_bridge`` (its daemons then listen on the
bridge instead of loopback) or ``pool_namespace`` (they run on a simulated host of their
own, ``.254``, which the hosts then join). Removing a host stops its daemons by pid, kills what is left
in its namespace or its root, unmounts its root and deletes its namespace and folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from . import POOL_HOST, _load_state, bridged, credentials, daemons, execute_node_token, netns, pool_address
from .commands import clean_env, run
from .config import (
    DEFAULT_RUNTIMES,
    HOST_NAME,
    NodeConfig,
    execute_accounts,
    render_daemon_config,
)
from .errors import PoolError
from .layout import PoolLayout
from .locking import exclusive
from .runtime import ChrootRuntime, _ensure_user, _ids_in, free_id

# Execute-account uids of simulated hosts: a block per host, above the pools' own blocks
# (runtime.EXECUTE_ID_BASE), chosen by the pool's port and the host's number, since all the
# chroots share this machine's pid space (see runtime.execute_uid_base).
HOST_ID_BASE = 100_000_000
HOST_IDS = 100
MAX_CPUS = 64
HOST_FILE = "host.json"
RUNTIME_NAME = re.compile(r"[A-Za-z0-9._+-]{1,64}")
TOKEN_FILE = "pool.token"


@dataclass(frozen=True)
class SimulatedHost:
    name: str
    number: int
    address: str
    namespace: str
    master_pid: int | None
    folder: Path

    def as_dict(self) -> dict:
        return {"name": self.name, "address": self.address, "namespace": self.namespace,
                "master_pid": self.master_pid, "folder": str(self.folder), "worker": self.name}


class HostRuntime(ChrootRuntime):
    """The chroot runtime of one host: its own overlay, every command in its namespace."""

    def __init__(self, layout: PoolLayout, rootfs: Path | None, namespace: str, first_uid: int,
                 pool_root: Path):
        super().__init__(layout, rootfs)
        self.namespace = namespace
        self.first_uid = first_uid
        self.pool_root = pool_root

    def command(self, argv: list[str]) -> list[str]:
        return netns.enter(self.namespace, super().command(argv))

    def ensure_execute_accounts(self, names, first_uid, say):
        """As the pool's, from this host's own block, never an id the pool's chroot uses."""
        taken = _ids_in(Path("/"), self.root, self.pool_root)
        for name in names:
            uid = free_id(taken, start=self.first_uid)
            if uid >= self.first_uid + HOST_IDS:
                raise PoolError(f"no free uid left for {name} in this host's block")
            if _ensure_user(self.command, name, say, env=clean_env(), uid=uid):
                taken.add(uid)
        return names


def host_layout(settings, name: str) -> PoolLayout:
    """The host's own folders: a pool layout rooted at ``<pool_dir>/hosts/<name>``."""
    folder = Path(settings.pool_dir) / "hosts" / name
    return PoolLayout(pool_dir=folder, client_config=folder / "client" / "condor_config")


def _network(settings) -> netns.PoolNetwork:
    return netns.PoolNetwork(settings.collector_port)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not HOST_NAME.fullmatch(name) or len(name) > 20:
        raise PoolError(f"a host name is 1-20 of a-z, 0-9 and '-' (not at either end), not {name!r}")
    if name == POOL_HOST:
        raise PoolError(f"'{POOL_HOST}' names the pool's own host (pool_namespace); choose another name")


def _records(settings) -> dict[str, dict]:
    found = {}
    for path in sorted((Path(settings.pool_dir) / "hosts").glob(f"*/{HOST_FILE}")):
        try:
            found[path.parent.name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PoolError(f"unreadable host record {path}: {exc}") from exc
    return found


def _free_number(records: dict[str, dict]) -> int:
    used = {int(r["number"]) for r in records.values()}
    for number in range(netns.FIRST_HOST, netns.LAST_HOST):  # .254: the pool's own host
        if number not in used:
            return number
    raise PoolError("every address of the pool's subnet is taken by a simulated host")


def _runtime(settings, name: str, record: dict, rootfs) -> HostRuntime:
    pool_layout = PoolLayout.from_settings(settings)
    first_uid = HOST_ID_BASE + (int(settings.collector_port) * 256 + int(record["number"])) * HOST_IDS
    return HostRuntime(host_layout(settings, name), rootfs, record["namespace"], first_uid,
                       pool_layout.chroot_root)


def add_host(settings, name: str, *, num_cpus: int = 2, runtimes: tuple[str, ...] = DEFAULT_RUNTIMES,
             token: str | None = None, log=print) -> SimulatedHost:
    """Create host ``name`` and start its execute node; returns it once its master runs.

    ``token``: the IDTOKEN its daemons present (default: a new execute-node token, as
    `pool token --execute-node` prints). On failure, nothing of the host is left.
    """
    _check_name(name)
    if not 1 <= int(num_cpus) <= MAX_CPUS:
        raise PoolError(f"cpus must be 1-{MAX_CPUS}, not {num_cpus}")
    bad = [r for r in runtimes if not isinstance(r, str) or not RUNTIME_NAME.fullmatch(r)]
    if bad or not runtimes:
        raise PoolError(f"runtimes must be names such as python3 (letters, digits, . _ + -), not {bad or runtimes!r}")
    netns.require_tools("a simulated host")
    if not bridged(settings):
        raise PoolError("simulated hosts need a pool whose daemons listen on its bridge: set "
                        "pool_bridge = true (MODACLOUDS_BATCH_POOL_BRIDGE=true) and `pool down; pool up`")
    pool_layout = PoolLayout.from_settings(settings)
    net = _network(settings)
    with exclusive(pool_layout.lock_file):
        state = _load_state(pool_layout)
        if state.get("mode") != "chroot" or not daemons.running_master(pool_layout):
            raise PoolError("the pool is not running in chroot mode; `modaclouds-batch pool up` first")
        records = _records(settings)
        if name in records:
            raise PoolError(f"simulated host {name} already exists; remove it first")
        if token is None:
            token = execute_node_token(settings)
        record = {"name": name, "number": _free_number(records), "cpus": int(num_cpus),
                  "runtimes": list(runtimes)}
        record["address"] = net.host_address(record["number"])
        record["namespace"] = net.namespace(name)
        layout = host_layout(settings, name)
        layout.pool_dir.mkdir(parents=True, exist_ok=True)
        (layout.pool_dir / HOST_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        try:
            netns.add_namespace(net, name, record["number"], log)
            pid = _start(settings, name, record, Path(state["rootfs"]), token, net, log)
        except (PoolError, OSError, ValueError):
            _teardown(settings, name, record, log)
            raise
        return SimulatedHost(name, record["number"], record["address"], record["namespace"], pid,
                             layout.pool_dir)


def _start(settings, name, record, rootfs: Path, token: str, net: netns.PoolNetwork, log) -> int:
    layout = host_layout(settings, name)
    runtime = _runtime(settings, name, record, rootfs)
    runtime.prepare(settings.pool_identity, log)
    # Its own /etc/hosts: it knows itself and the central manager by address.
    (layout.chroot_root / "etc" / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n{record['address']}\t{name}\n{pool_address(settings)}\tcentral-manager\n",
        encoding="utf-8")
    for private in (layout.password_dir, layout.system_token_dir):
        private.mkdir(parents=True, exist_ok=True)
        os.chmod(private, 0o700)
    credentials.write_private(layout.system_token_dir / TOKEN_FILE, token.strip() + "\n")
    writable = list(layout.runtime_dirs(name).values())
    for folder in writable:
        folder.mkdir(parents=True, exist_ok=True)
    runtime.chown_to_condor(writable)
    os.chmod(layout.log_dir(name), 0o750)
    accounts = runtime.ensure_execute_accounts(
        execute_accounts(settings.pool_identity, "h" + str(record["number"]), record["cpus"]), 0, log)
    config = NodeConfig(
        role="execute", node=name, local_dir=layout.node_dir(name), password_dir=layout.password_dir,
        system_token_dir=layout.system_token_dir, uid_domain=settings.uid_domain,
        pool_identity=settings.pool_identity, collector_port=settings.collector_port,
        schedd_port=settings.schedd_port, base_config=runtime.base_config, num_cpus=record["cpus"],
        runtimes=tuple(record["runtimes"]), execute_accounts=accounts, address=record["address"],
        central_manager=pool_address(settings), host_name=name)
    layout.daemon_config(name).write_text(render_daemon_config(config), encoding="utf-8")
    pid = daemons.start_master(runtime, layout, name)
    log(f"started simulated host {name} at {record['address']} (condor_master pid {pid}); "
        f"logs in {layout.log_dir(name)}")
    return pid


def remove_host(settings, name: str, log=print) -> None:
    """Stop host ``name``'s daemons and delete everything of it; idempotent."""
    _check_name(name)
    netns.require_tools("removing a simulated host")
    with exclusive(PoolLayout.from_settings(settings).lock_file):
        _remove(settings, name, log)


def _remove(settings, name: str, log) -> None:
    """remove_host with the pool's lock held."""
    record = _records(settings).get(name)
    if record is None:
        ns = _network(settings).namespace(name)
        if ns in netns.namespaces(_network(settings)):
            record = {"name": name, "number": netns.FIRST_HOST, "namespace": ns}
        else:
            shutil.rmtree(host_layout(settings, name).pool_dir, ignore_errors=True)
            return
    _teardown(settings, name, record, log)


def drain_host(settings, name: str, timeout: float, log=print) -> bool:
    """Drain host ``name``'s startd from the host itself (root there, FS: a node joined by
    token cannot check the gateway's token, so the pool cannot drain it remotely) and wait
    up to ``timeout`` seconds for its running jobs to finish. True once none is claimed."""
    record = _records(settings).get(name)
    if record is None:
        raise PoolError(f"no simulated host {name}")
    layout = host_layout(settings, name)
    runtime = _runtime(settings, name, record, None)
    if not daemons.running_master(layout, name):
        return True
    env = clean_env({"CONDOR_CONFIG": str(layout.daemon_config(name)),
                     "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "FS, IDTOKENS"})
    try:
        address = (layout.log_dir(name) / ".startd_address").read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError) as exc:
        raise PoolError(f"host {name}'s startd wrote no address ({exc}); read {layout.log_dir(name)}") from exc
    run(runtime.command(["condor_drain", "-graceful", "-reason", "retiring", address]),
        f"draining host {name}", env=env)
    log(f"draining host {name} (graceful: running jobs finish)")
    deadline = time.monotonic() + timeout
    while True:
        states = run(runtime.command(["condor_status", "-direct", address, "-af", "State"]),
                     f"asking host {name}'s startd for its slots", env=env).split()
        if "Claimed" not in states:
            return True
        if time.monotonic() > deadline:
            log(f"host {name} still runs jobs after {timeout:.0f} s of draining")
            return False
        time.sleep(1)


def remove_all(settings, log=print) -> None:
    """Every simulated host of this pool, and any namespace of this pool's name left without
    a record; for `pool down`, which holds the pool's lock."""
    for name in _records(settings):
        _remove(settings, name, log)
    net = _network(settings)
    if netns.host_tools_present():
        for ns in netns.namespaces(net):
            if ns == net.namespace(POOL_HOST):
                continue  # the pool's own (pool_namespace): `down` stops it
            _kill_all(netns.pids_in(ns))
            netns.remove_namespace(net, ns.removeprefix(net.namespace_prefix), log)


def _teardown(settings, name: str, record: dict, log) -> None:
    layout = host_layout(settings, name)
    net = _network(settings)
    runtime = _runtime(settings, name, record, None)
    pid = daemons.running_master(layout, name)
    if pid:
        daemons.stop_master(pid, log)
    # A killed master leaves its daemons (and jobs) behind: all of them live in the
    # namespace or under the host's root, and nothing else does.
    strays = set(runtime.leftover_pids())
    if record.get("namespace") in netns.namespaces(net):
        strays |= set(netns.pids_in(record["namespace"]))
    _kill_all(sorted(strays))
    runtime.release(log)
    netns.remove_namespace(net, name, log)
    if layout.pool_dir.exists():
        shutil.rmtree(layout.pool_dir)


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    alive = daemons._wait_gone(pids, 10)
    if alive:
        raise PoolError(f"processes of a simulated host would not exit: {alive}")


def kill_host(settings, name: str) -> list[int]:
    """SIGKILL every process of host ``name`` (its master, startd, starters and jobs), as a
    machine that loses power: nothing gets to tell the pool. The namespace and folders stay
    (remove_host cleans them). Returns the pids killed."""
    record = _records(settings).get(name)
    if record is None:
        raise PoolError(f"no simulated host {name}")
    runtime = _runtime(settings, name, record, None)
    pids = sorted(set(netns.pids_in(record["namespace"])) | set(runtime.leftover_pids()))
    _kill_all(pids)
    return pids


def hosts(settings) -> list[SimulatedHost]:
    """This pool's simulated hosts, with their master's pid when it runs."""
    found = []
    for name, record in _records(settings).items():
        layout = host_layout(settings, name)
        found.append(SimulatedHost(name, int(record["number"]), record["address"], record["namespace"],
                                   daemons.running_master(layout, name), layout.pool_dir))
    return found
