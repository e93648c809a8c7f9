"""Extra execute nodes in the managed pool: another condor_master + startd on this machine.

Each node has its own name (``STARTD_NAME``), folders and config under the pool folder
and shares the pool-wide key and tokens; `pool down` stops them with the rest.
"""

from __future__ import annotations

import dataclasses
import shutil

from . import _extra_nodes, _load_state, _node_config, _prepare_node, _runtime, daemons
from .config import configured_execute_accounts, render_daemon_config
from .errors import PoolError
from .layout import MAIN_NODE, PoolLayout
from .locking import exclusive


def add_execute_node(settings, node: str, *, num_cpus: int, runtimes: tuple[str, ...], log=print) -> int:
    """Start an execute-only node named ``node``; returns its condor_master's pid."""
    if node == MAIN_NODE:
        raise PoolError(f"'{MAIN_NODE}' is the all-in-one node's name")
    layout = PoolLayout.from_settings(settings)
    with exclusive(layout.lock_file):
        state = _load_state(layout)
        if not state.get("mode") or not daemons.running_master(layout):
            raise PoolError("the pool is not running; `modaclouds-batch pool up` first")
        if daemons.running_master(layout, node):
            raise PoolError(f"execute node {node} already runs")
        runtime = _runtime(state["mode"], settings, layout, build=False, say=log)
        accounts = _prepare_node(runtime, settings, layout, node, num_cpus, log)
        config = dataclasses.replace(
            _node_config(settings, layout, runtime, role="execute", node=node, num_cpus=num_cpus,
                         accounts=accounts),
            runtimes=tuple(runtimes))
        layout.daemon_config(node).write_text(render_daemon_config(config), encoding="utf-8")
        pid = daemons.start_master(runtime, layout, node)
        log(f"started execute node {node} (condor_master pid {pid}); logs in {layout.log_dir(node)}")
        return pid


def remove_execute_node(settings, node: str, log=print) -> None:
    """Stop node ``node``'s master (fast shutdown); delete its folders, config and accounts."""
    if node == MAIN_NODE:
        raise PoolError(f"'{MAIN_NODE}' is the pool itself; use `pool down`")
    layout = PoolLayout.from_settings(settings)
    with exclusive(layout.lock_file):
        pid = daemons.running_master(layout, node)
        if pid:
            daemons.stop_master(pid, log)
        try:
            accounts = configured_execute_accounts(layout.daemon_config(node).read_text(encoding="utf-8"))
        except FileNotFoundError:
            accounts = ()
        if accounts:
            state = _load_state(layout)
            runtime = _runtime(state.get("mode") or "chroot", settings, layout, build=False, say=log)
            try:
                runtime.remove_execute_accounts(accounts, log)
            except PoolError as exc:
                log(f"could not delete the execute accounts of {node} ({exc}); they stay unused")
        shutil.rmtree(layout.node_dir(node), ignore_errors=True)
        layout.daemon_config(node).unlink(missing_ok=True)


def execute_nodes(settings) -> list[str]:
    """Names of the extra execute nodes that run now."""
    layout = PoolLayout.from_settings(settings)
    return [n for n in _extra_nodes(layout) if daemons.running_master(layout, n)]
