"""Session fixtures for integration tests: a served gateway on the real pool.

Imported by conftest.py; they build on its `pool` fixture (the pool is brought up once).
"""

from __future__ import annotations

import htcondor2
import pytest

from .gateway import GatewayProcess

WEBHOOK_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLWludGVncmF0aW9uLXRlc3Rz"
# Every test gateway signs webhooks and retries quickly, so tests wait seconds, not minutes.
GATEWAY_ENV = {
    "MODACLOUDS_BATCH_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "MODACLOUDS_BATCH_WEBHOOK_BACKOFF_INITIAL": "0.5",
    "MODACLOUDS_BATCH_WEBHOOK_BACKOFF_MAX": "2",
    "MODACLOUDS_BATCH_WEBHOOK_TIMEOUT": "3",
    # The tests' receivers listen on loopback, which a gateway calls only when told to.
    "MODACLOUDS_BATCH_WEBHOOK_ALLOW_PRIVATE": "true",
}


@pytest.fixture(scope="session")
def condor_config(pool):
    return pool.condor_config


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, condor_config, pool):
    # The pool folder tells the gateway that it manages this pool (so it may add workers), and
    # the pool's ports are where the execute nodes it adds must find the collector.
    env = {**GATEWAY_ENV, "MODACLOUDS_BATCH_POOL_DIR": str(pool.pool_dir),
           "MODACLOUDS_BATCH_COLLECTOR_PORT": str(pool.collector_port),
           "MODACLOUDS_BATCH_SCHEDD_PORT": str(pool.schedd_port)}
    process = GatewayProcess(tmp_path_factory.mktemp("gateway"), condor_config, env=env).start()
    yield process
    process.stop()


@pytest.fixture
def client(gateway):
    return gateway.client()


@pytest.fixture(scope="session")
def small_limits_gateway(tmp_path_factory, condor_config):
    process = GatewayProcess(
        tmp_path_factory.mktemp("small-limits"), condor_config,
        env={**GATEWAY_ENV, "MODACLOUDS_BATCH_MAX_UPLOAD_BYTES": str(4 << 20),
             "MODACLOUDS_BATCH_MAX_UNPACKED_BYTES": str(8 << 20)},
    ).start()
    yield process, process.client()
    process.stop()


@pytest.fixture(scope="session")
def schedd(condor_config):
    """The raw bindings, to check what the schedd itself says."""
    import os

    from modaclouds_batch.condor.schedd import locate_schedd

    os.environ["CONDOR_CONFIG"] = str(condor_config)
    htcondor2.reload_config()
    return RetriedOnce(htcondor2.Schedd(locate_schedd()))


class RetriedOnce:
    """The raw schedd, each call made a second time when the first fails.

    After a test restarts the pool, this process's first call to the new schedd fails once
    ("Server rejected our session id": the bindings cache the security session with the old
    daemon, drop it, and negotiate anew on the next call). htcondor2 has no call to drop the
    cache up front, so the fixture does what the gateway does: retry once.
    """

    def __init__(self, schedd: htcondor2.Schedd):
        self._schedd = schedd

    def __getattr__(self, name):
        attr = getattr(self._schedd, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except htcondor2.HTCondorException:
                return attr(*args, **kwargs)
        return call


@pytest.fixture
def condor_queue(schedd):
    """Ids of queued jobs whose name marks them as made by the hostile-archive tests."""
    def ids():
        ads = schedd.query('regexp("^hostile", GatewayJobName ?: "")', ["GatewayJobId"])
        return sorted(str(ad.get("GatewayJobId")) for ad in ads)
    return ids
