"""Past one machine: execute nodes on simulated hosts (network namespaces with their own
address and root filesystem) joining a pool of this module's own by token, jobs whose
files cross that network, a second pool beside the session's, the `command` provider
driven for real, and a node lost mid-job.

Needs root and iproute2 (namespaces, veth, a bridge); skipped with the reason otherwise.
The pool here is this module's own (its own ports, home and bridge): tests kill and drain
its nodes, never the session pool's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from modaclouds_batch.condor import pool as pool_tooling
from modaclouds_batch.condor.pool import credentials, host, hosts, netns
from modaclouds_batch.condor.pool.mounts import mounts_under
from modaclouds_batch.settings import load_settings

from tests.polling import until

from .conftest import RUN_POOLS, _distinct_free_ports, _remove_unless_mounted
from .test_pool import COMPLETED, submit_spooled, use_client_config, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _namespaces_unavailable() -> str | None:
    """Why simulated hosts cannot run here, or None."""
    if os.geteuid() != 0:
        return "simulated hosts need root (network namespaces, veth pairs, a bridge)"
    for tool in ("ip", "nsenter"):
        if not shutil.which(tool):
            return f"simulated hosts need `{tool}` (apt-get install iproute2 util-linux)"
    probe = f"mbprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"network namespaces are not allowed here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


WHY_NOT = _namespaces_unavailable()
if WHY_NOT:
    pytestmark.append(pytest.mark.skip(reason=WHY_NOT))

# Short leases, so a lost node costs seconds here (production keeps HTCondor's 2400 and 900).
LEASE_SECONDS = 20


def _quiet(line: str) -> None:
    """Pool tooling reports progress; tests read results."""


def _bridge_pool_settings():
    RUN_POOLS.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="hosts-", dir=RUN_POOLS))
    # The collector port picks the pool's subnet: one that no link of this machine routes.
    while True:
        collector_port, schedd_port = _distinct_free_ports(2)
        if not netns.routed_elsewhere(netns.PoolNetwork(collector_port)):
            break
    return load_settings({"home": home, "collector_port": collector_port, "schedd_port": schedd_port,
                          "pool_bridge": True, "pool_job_lease_seconds": LEASE_SECONDS,
                          "pool_ad_lifetime_seconds": LEASE_SECONDS})


@pytest.fixture(scope="module")
def bridge_pool():
    """A second pool, this module's own, whose daemons listen on its bridge."""
    settings = _bridge_pool_settings()
    pool_tooling.up(settings, log=_quiet)
    try:
        yield settings
    finally:
        pool_tooling.down(settings, log=_quiet)
        _remove_unless_mounted(settings.home)


def _host_name() -> str:
    return f"t{uuid.uuid4().hex[:6]}"


def _processes_rooted_under(folder: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/root").startswith(f"{folder}/"):
                found.append(int(entry))
        except OSError:
            continue
    return found


def test_a_simulated_host_joins_by_its_own_token_and_runs_a_job_whose_files_cross_the_network(bridge_pool, tmp_path):
    name = _host_name()
    added = hosts.add_host(bridge_pool, name, num_cpus=1, log=_quiet)
    layout = hosts.host_layout(bridge_pool, name)
    try:
        # Its own address, its own root, and never the pool's signing key: only its token.
        assert added.address.startswith(netns.PoolNetwork(bridge_pool.collector_port).bridge_address.rsplit(".", 1)[0])
        assert list(layout.password_dir.iterdir()) == []
        token = (layout.system_token_dir / hosts.TOKEN_FILE).read_text()
        assert credentials.token_scopes(token) == {"ADVERTISE_STARTD", "ADVERTISE_MASTER", "READ"}

        schedd = use_client_config(bridge_pool)
        import htcondor2

        deadline = time.monotonic() + 60
        ads = []
        while not ads and time.monotonic() < deadline:
            ads = htcondor2.Collector().query(
                htcondor2.AdType.Startd, constraint=f'Machine == "{name}"',
                projection=["Name", "MyAddress", "AuthenticatedIdentity", "AuthenticationMethod"])
            time.sleep(1)
        assert ads, f"host {name} never joined the collector"
        assert ads[0]["AuthenticatedIdentity"] == f"execute-node@{bridge_pool.uid_domain}"
        assert ads[0]["AuthenticationMethod"] == "IDTOKENS"
        assert f"<{added.address}:" in ads[0]["MyAddress"]

        (tmp_path / "in.txt").write_text("across the bridge\n")
        (tmp_path / "run.sh").write_text("#!/bin/sh\ncat in.txt\ncat /proc/net/fib_trie\n")
        (tmp_path / "run.sh").chmod(0o755)
        cluster = submit_spooled(schedd, tmp_path, {
            "executable": str(tmp_path / "run.sh"), "transfer_input_files": "in.txt", "output": "out.txt",
            "error": "err.txt", "should_transfer_files": "YES", "when_to_transfer_output": "ON_EXIT",
            "requirements": f'Machine == "{name}"',
        })
        done = wait_for_status(schedd, cluster, COMPLETED, timeout=120)
        schedd.retrieve(f"ClusterId == {cluster}")
        schedd.edit(f"ClusterId == {cluster}", "LeaveJobInQueue", "false")

        out = (tmp_path / "out.txt").read_text()
        assert out.startswith("across the bridge\n")
        assert added.address in out  # it ran where that address is local: in the namespace
        assert done["Owner"] == bridge_pool.pool_identity
    finally:
        hosts.remove_host(bridge_pool, name, log=_quiet)

    assert added.namespace not in netns.namespaces(netns.PoolNetwork(bridge_pool.collector_port))
    assert mounts_under(layout.pool_dir) == [] and not layout.pool_dir.exists()
    assert added.master_pid and not host.pid_alive(added.master_pid)
    assert _processes_rooted_under(layout.pool_dir) == []


def test_two_pools_run_at_once_on_their_own_ports_and_both_run_a_job(pool, bridge_pool, tmp_path):
    assert pool.collector_port != bridge_pool.collector_port
    assert pool_tooling.status(pool).running and pool_tooling.status(bridge_pool).running
    for settings in (pool, bridge_pool):
        iwd = tmp_path / str(settings.collector_port)
        iwd.mkdir()
        schedd = use_client_config(settings)
        cluster = submit_spooled(schedd, iwd, {
            "executable": "/bin/echo", "arguments": str(settings.collector_port), "transfer_executable": "false",
            "output": "out.txt", "should_transfer_files": "YES", "when_to_transfer_output": "ON_EXIT",
        })
        wait_for_status(schedd, cluster, COMPLETED, timeout=120)
        schedd.retrieve(f"ClusterId == {cluster}")
        schedd.edit(f"ClusterId == {cluster}", "LeaveJobInQueue", "false")
        assert (iwd / "out.txt").read_text() == f"{settings.collector_port}\n"


# --- the `command` provider, driven for real ----------------------------------------------

PROVIDER = Path(__file__).resolve().parents[2] / "bundles" / "providers" / "netns-node.sh"


@pytest.fixture(scope="module")
def bridge_gateway(bridge_pool, tmp_path_factory):
    """A gateway on this module's pool whose `command` provider is the shipped example."""
    import sys

    from .fixtures import GATEWAY_ENV
    from .gateway import GatewayProcess

    env = {**GATEWAY_ENV,
           "MODACLOUDS_BATCH_POOL_DIR": str(bridge_pool.pool_dir),
           "MODACLOUDS_BATCH_COLLECTOR_PORT": str(bridge_pool.collector_port),
           "MODACLOUDS_BATCH_SCHEDD_PORT": str(bridge_pool.schedd_port),
           "MODACLOUDS_BATCH_POOL_BRIDGE": "true",
           "MODACLOUDS_BATCH_POOL_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
           "MODACLOUDS_BATCH_POOL_AD_LIFETIME_SECONDS": str(LEASE_SECONDS),
           "MODACLOUDS_BATCH_WORKER_PROVIDER_COMMAND": str(PROVIDER),
           "MODACLOUDS_BATCH_WORKER_LOST_AFTER": "5",
           "NETNS_NODE_CLI": f"{sys.executable} -m modaclouds_batch",
           "NETNS_NODE_DRAIN_SECONDS": "120"}
    process = GatewayProcess(tmp_path_factory.mktemp("bridge-gateway"), bridge_pool.condor_config, env=env).start()
    yield process
    process.stop()


def wait(predicate, timeout=120.0, what="condition"):
    return until(predicate, timeout, what, every=1)


def request_record(client, request_id):
    return next(r for r in client.get("/workers/requests").json() if r["id"] == request_id)


def provision(client, **params) -> str:
    """POST /workers with the command provider; the worker's name once it is ready."""
    resp = client.post("/workers", json={"provider": "command", "params": params})
    assert resp.status_code == 202, resp.text
    request_id = resp.json()["id"]

    def ready():
        record = request_record(client, request_id)
        assert record["status"] != "failed", record
        return record if record["status"] == "ready" else None

    return wait(ready, 120, "the command provider's worker to be ready")["worker"]


def test_the_command_provider_adds_a_host_whose_jobs_files_cross_the_network_and_retires_it(bridge_pool, bridge_gateway):
    from .gateway import pack, pack_bundle

    client = bridge_gateway.client()
    name = provision(client, cpus=1, runtimes=["bash", "far-bash"])

    # The worker appears with its runtimes, as the gateway's.
    worker = wait(lambda: client.get(f"/workers/{name}").json() if client.get(f"/workers/{name}").status_code == 200
                  else None, 60, "the worker to show")
    assert worker["managed_by_gateway"] and worker["provider"] == "command"
    assert worker["runtimes"] == ["bash", "far-bash"] and worker["cpus_total"] == 1

    # A job only that host can run: its bundle and input go there, its output comes back.
    job_id = client.submit(pack_bundle("hello"), name="far-hello", arguments="across",
                           input_archive=pack(None, {"far-input.txt": b"from the gateway\n"}),
                           **{"job-runtime": "far-bash"}).json()["job_id"]
    job = client.wait_for(job_id, "completed", timeout=180)
    assert job["remote_host"].endswith(f"@{name}")
    stdout = client.get(f"/jobs/{job_id}/artifacts/stdout").text
    assert "far-input.txt" in stdout and "[across]" in stdout
    output = client.get(f"/jobs/{job_id}/artifacts/output")
    assert output.status_code == 200
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(output.content)) as tar:
        hello = next(m for m in tar.getmembers() if m.name.endswith("hello.txt"))
        assert tar.extractfile(hello).read() == b"hello, world\nacross\n"

    # A node that joined by token cannot check the gateway's token: the gateway cannot drain
    # it remotely (a clear 503, nothing changed); retiring drains it from the host itself.
    refused = client.post(f"/workers/{name}/drain", json={"how": "graceful"})
    assert refused.status_code == 503 and "error" in refused.json(), refused.text
    assert client.get(f"/workers/{name}").json()["draining"] is False

    # DELETE drains and retires it: the host and its namespace are gone.
    retire = client.http.delete(f"{client.url}/workers/{name}")
    assert retire.status_code == 202, retire.text
    wait(lambda: request_record(client, retire.json()["id"])["status"] == "done", 180, "the retirement")
    wait(lambda: client.get(f"/workers/{name}").status_code == 404, 60, "the worker to leave the pool")
    net = netns.PoolNetwork(bridge_pool.collector_port)
    assert net.namespace(name) not in netns.namespaces(net)
    assert not hosts.host_layout(bridge_pool, name).pool_dir.exists()


# --- a node lost mid-job -------------------------------------------------------------------


def test_a_host_lost_mid_job_costs_the_job_one_rerun_elsewhere_and_one_webhook(bridge_pool, bridge_gateway):
    from ..receiver import Receiver
    from .gateway import pack_bundle

    client = bridge_gateway.client()
    receiver = Receiver()
    name = provision(client, cpus=1, runtimes=["bash", "python3"])
    main = next(w["name"] for w in client.get("/workers").json() if not w["managed_by_gateway"])
    # The pool's own node takes nothing until the host is lost: the job must start there.
    assert client.post(f"/workers/{main}/drain", json={"how": "quick"}).status_code == 202
    try:
        job_id = client.submit(pack_bundle("sleeper"), name="lost-node", arguments="20",
                               notify=f"{receiver.url}/done").json()["job_id"]
        # run_count counts starts of run.sh itself (NumJobStarts), not of the claim.
        client.wait_until(job_id, lambda j: j["job_status"] == "running" and j.get("run_count") == 1
                          and str(j.get("remote_host", "")).endswith(f"@{name}"),
                          timeout=120, what="running on the host")

        killed = hosts.kill_host(bridge_pool, name)  # its startd, starter and the job: no goodbye
        assert killed

        # After the job lease HTCondor requeues it; the gateway shows it idle again.
        idle = client.wait_until(job_id, lambda j: j["job_status"] == "idle", timeout=LEASE_SECONDS * 6,
                                 what="idle again after the lease")
        assert idle["run_count"] == 1
    finally:
        assert client.post(f"/workers/{main}/undrain").status_code == 202

    done = client.wait_for(job_id, "completed", timeout=240)
    assert done["run_count"] == 2
    assert done["remote_host"].endswith(f"@{main}")
    history = client.get(f"/jobs/{job_id}/events").json()
    states = [e["state"] for e in history]
    assert states[-1] == "completed" and states.count("running") == 2, history
    requeued = history[states.index("idle", states.index("running"))]
    assert "requeued" in requeued["reason"] and name in requeued["reason"], requeued

    # One webhook, for the end, however many runs it took.
    receiver.wait_for(1, timeout=60)
    time.sleep(3)
    assert len(receiver.requests) == 1 and receiver.requests[0]["json"]["job_status"] == "completed"
    receiver.close()

    # The host's ads leave the collector: its worker request is lost, and DELETE cleans up.
    provisioned = next(r for r in client.get("/workers/requests").json()
                       if r["worker"] == name and r["action"] == "provision")
    wait(lambda: request_record(client, provisioned["id"])["status"] == "lost", LEASE_SECONDS * 6, "the worker lost")
    retire = client.http.delete(f"{client.url}/workers/{name}")
    assert retire.status_code == 202, retire.text
    wait(lambda: request_record(client, retire.json()["id"])["status"] == "done", 120, "the lost host's cleanup")
    net = netns.PoolNetwork(bridge_pool.collector_port)
    assert net.namespace(name) not in netns.namespaces(net)


# --- the gateway and the schedd on different hosts -------------------------------------------


def test_a_gateway_on_a_host_of_its_own_submits_tracks_and_retrieves_without_the_pools_files(bridge_pool, tmp_path):
    """The gateway in a namespace of its own, with the pool's folder hidden from it (a tmpfs
    over it in its mount namespace): every byte to and from the schedd crosses the bridge."""
    import io
    import signal
    import sys
    import tarfile

    import requests

    from modaclouds_batch.condor.pool.config import render_client_config
    from modaclouds_batch.condor.pool.layout import PoolLayout

    from .fixtures import GATEWAY_ENV
    from .gateway import Client, pack, pack_bundle

    net = netns.PoolNetwork(bridge_pool.collector_port)
    ns, number = net.namespace("gw"), netns.LAST_HOST - 1
    address = net.host_address(number)
    home = tmp_path / "remote-gateway"
    condor_dir = home / "condor"
    credentials.write_private(condor_dir / "tokens.d" / "gateway.token",
                              PoolLayout.from_settings(bridge_pool).client_token.read_text())
    (condor_dir / "condor_config").write_text(render_client_config(
        collector_port=bridge_pool.collector_port, token_dir=condor_dir / "tokens.d",
        address=net.bridge_address, job_lease_seconds=LEASE_SECONDS))
    netns.add_namespace(net, "gw", number, _quiet)
    log = open(tmp_path / "remote-gateway.log", "ab")
    # `ip netns exec` gives the command a mount namespace of its own: the tmpfs stays there.
    process = subprocess.Popen(
        ["ip", "netns", "exec", ns, "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"',
         str(bridge_pool.pool_dir), sys.executable, "-m", "modaclouds_batch", "--home", str(home), "serve",
         "--host", address, "--port", "5000", "--condor-config", str(condor_dir / "condor_config")],
        env={**os.environ, **GATEWAY_ENV, "MODACLOUDS_BATCH_TRACKER_INTERVAL": "1"},
        stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://{address}:5000"

        def answers():
            assert process.poll() is None, (tmp_path / "remote-gateway.log").read_text()[-3000:]
            try:
                return requests.get(f"{url}/health", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait(answers, 60, "the remote gateway to answer")
        # Neither sees the other's files: the pool's folder is hidden from the gateway, and the
        # gateway's home is not in the schedd's root filesystem.
        with open(f"/proc/{process.pid}/mountinfo", encoding="utf-8") as mounts:
            assert any(line.split()[4] == str(bridge_pool.pool_dir) for line in mounts)
        schedd_root = PoolLayout.from_settings(bridge_pool).chroot_root
        assert not (schedd_root / str(home).lstrip("/")).exists()
        client = Client(url, (home / "admin-token").read_text().strip())

        job_id = client.submit(pack_bundle("hello"), name="from-afar", arguments="far",
                               input_archive=pack(None, {"sent.txt": b"over the bridge\n"})).json()["job_id"]
        job = client.wait_for(job_id, "completed", timeout=180)

        assert job["run_count"] == 1 and job["exit_status"] == 0
        stdout = client.get(f"/jobs/{job_id}/artifacts/stdout").text
        assert "sent.txt" in stdout and "[far]" in stdout
        with tarfile.open(fileobj=io.BytesIO(client.get(f"/jobs/{job_id}/artifacts/output").content)) as tar:
            hello = next(m for m in tar.getmembers() if m.name.endswith("hello.txt"))
            assert tar.extractfile(hello).read() == b"hello, world\nfar\n"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
        netns.remove_namespace(net, "gw", _quiet)


def test_the_gateway_serves_from_a_schedd_on_another_host_with_no_shared_files(tmp_path):
    """A second small pool whose daemons all run on a simulated host of their own
    (pool_namespace); the gateway, on this machine, reaches its schedd over the bridge only,
    with the pool's folder hidden from it (a tmpfs over it in its own mount namespace)."""
    import io
    import signal
    import sys
    import tarfile

    from modaclouds_batch.condor.pool.config import render_client_config
    from modaclouds_batch.condor.pool.layout import PoolLayout

    from .fixtures import GATEWAY_ENV
    from .gateway import Client, free_port, pack, pack_bundle

    settings = _bridge_pool_settings()
    settings = load_settings({**{k: getattr(settings, k) for k in ("home", "collector_port", "schedd_port")},
                              "pool_namespace": True})
    status = pool_tooling.up(settings, log=_quiet)
    process = None
    try:
        net = netns.PoolNetwork(settings.collector_port)
        assert status.collector == f"{net.host_address(netns.LAST_HOST)}:{settings.collector_port}"
        assert f"<{net.host_address(netns.LAST_HOST)}:" in status.schedd
        # The schedd's host: only its daemons live in that namespace.
        assert net.namespace(pool_tooling.POOL_HOST) in netns.namespaces(net)

        home = tmp_path / "gateway-home"
        condor_dir = home / "condor"
        credentials.write_private(condor_dir / "tokens.d" / "gateway.token",
                                  PoolLayout.from_settings(settings).client_token.read_text())
        (condor_dir / "condor_config").write_text(render_client_config(
            collector_port=settings.collector_port, token_dir=condor_dir / "tokens.d",
            address=pool_tooling.pool_address(settings)))
        port = free_port()
        with open(tmp_path / "gateway.log", "ab") as log:
            process = subprocess.Popen(
                ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"',
                 str(settings.pool_dir), sys.executable, "-m", "modaclouds_batch", "--home", str(home), "serve",
                 "--port", str(port), "--condor-config", str(condor_dir / "condor_config")],
                env={**os.environ, **GATEWAY_ENV, "MODACLOUDS_BATCH_TRACKER_INTERVAL": "1"},
                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"

        def answers():
            import requests

            assert process.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
            try:
                return requests.get(f"{url}/health", timeout=2).json()["schedd"]["ok"]
            except (requests.ConnectionError, ValueError, KeyError):
                return False

        wait(answers, 60, "the gateway to reach the remote schedd")
        with open(f"/proc/{process.pid}/mountinfo", encoding="utf-8") as mounts:
            assert any(line.split()[4] == str(settings.pool_dir) for line in mounts)
        client = Client(url, (home / "admin-token").read_text().strip())

        job_id = client.submit(pack_bundle("hello"), name="remote-schedd", arguments="far",
                               input_archive=pack(None, {"sent.txt": b"over the bridge\n"})).json()["job_id"]
        job = client.wait_for(job_id, "completed", timeout=180)

        assert job["run_count"] == 1 and job["exit_status"] == 0 and job["backend_id"] > 0
        stdout = client.get(f"/jobs/{job_id}/artifacts/stdout").text
        assert "sent.txt" in stdout and "[far]" in stdout
        with tarfile.open(fileobj=io.BytesIO(client.get(f"/jobs/{job_id}/artifacts/output").content)) as tar:
            hello = next(m for m in tar.getmembers() if m.name.endswith("hello.txt"))
            assert tar.extractfile(hello).read() == b"hello, world\nfar\n"
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        pool_tooling.down(settings, log=_quiet)
        _remove_unless_mounted(settings.home)
    assert net.namespace(pool_tooling.POOL_HOST) not in netns.namespaces(net)
