"""Integration fixtures: a real pool of this test run's own, and a served gateway.

Each run brings up its own single-node pool (its own home under /var/tmp, its own free
collector and schedd ports) and stops it at the end, so two runs on one machine, or a run
beside a gateway someone serves, never restart, drain or reuse each other's pool. With
MODACLOUDS_BATCH_CONDOR_CONFIG set, that pool is used as it is instead (and not stopped).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from modaclouds_batch.settings import load_settings

from .fixtures import *  # noqa: F401,F403  (gateway, client, schedd, ...)
from .gateway import free_port

# Under /var/tmp, not pytest's basetemp: pytest prunes old basetemps, and a pool left
# mounted by a crashed run must not be swept by a later run's pruning.
RUN_POOLS = Path("/var/tmp/modaclouds-batch-test-pools")


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="session")
def pool():
    """Settings whose condor_config reaches a running pool (this run's own, see above)."""
    if os.environ.get("MODACLOUDS_BATCH_CONDOR_CONFIG"):
        yield load_settings()
        return
    from modaclouds_batch.condor import pool as pool_tooling

    RUN_POOLS.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="run-", dir=RUN_POOLS))
    collector_port, schedd_port = _distinct_free_ports(2)
    settings = load_settings({"home": home, "collector_port": collector_port,
                              "schedd_port": schedd_port})
    pool_tooling.up(settings, log=lambda line: None)
    try:
        yield settings
    finally:
        pool_tooling.down(settings, log=lambda line: None)
        _remove_unless_mounted(home)


@pytest.fixture(autouse=True)
def _condor_config_restored():
    """Give the next test this process's HTCondor config as this one found it.

    The bindings' config is process-wide: a test that points it at a pool of its own (to
    talk to that pool's schedd directly) would leave every later test's raw ``schedd`` sending
    that pool's token to the session pool, refused as an IDTOKENS failure."""
    before = os.environ.get("CONDOR_CONFIG")
    yield
    if os.environ.get("CONDOR_CONFIG") == before:
        return
    if before is None:
        os.environ.pop("CONDOR_CONFIG", None)
    else:
        os.environ["CONDOR_CONFIG"] = before
    import htcondor2

    htcondor2.reload_config()


def _remove_unless_mounted(home: Path) -> None:
    """Delete this run's pool home, but never through a mount `down` failed to release."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    if any(point == str(home) or point.startswith(f"{home}/") for point in points):
        print(f"leaving {home}: something is still mounted below it")
        return
    shutil.rmtree(home, ignore_errors=False)
