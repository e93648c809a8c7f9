"""Simulated hosts' pure parts: the pool network's names and addresses, the configs of a
pool that listens on its bridge and of a node on a host of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from modaclouds_batch.condor.pool import PoolError, pool_address, render_daemon_config
from modaclouds_batch.condor.pool.config import NodeConfig, render_client_config
from modaclouds_batch.condor.pool.hosts import _check_name, _free_number
from modaclouds_batch.condor.pool.netns import PoolNetwork
from modaclouds_batch.settings import load_settings

from .test_pool_config import knobs, node


def test_each_pool_has_its_own_subnet_and_names_carrying_its_port():
    one, other = PoolNetwork(9618), PoolNetwork(9718)

    assert str(one.subnet) == "10.37.146.0/24" and one.bridge_address == "10.37.146.1"
    assert one.host_address(2) == "10.37.146.2" and one.host_pattern == "10.37.146.*"
    assert not one.subnet.overlaps(other.subnet)
    assert one.namespace("n1") == "mb9618-n1" and not one.namespace("n1").startswith(other.namespace_prefix)
    # Interface names must fit the kernel's 15 characters, whatever the port.
    assert len(PoolNetwork(65535).veth(254)) <= 15 and len(PoolNetwork(65535).bridge) <= 15


def test_a_host_number_outside_the_subnet_is_refused():
    with pytest.raises(ValueError):
        PoolNetwork(9618).host_address(255)


def test_the_pool_listens_on_loopback_unless_it_has_a_bridge(tmp_path):
    assert pool_address(load_settings({"home": tmp_path}, environ={})) == "127.0.0.1"
    bridged = load_settings({"home": tmp_path, "pool_bridge": True, "collector_port": 9618}, environ={})
    assert pool_address(bridged) == "10.37.146.1"
    on_a_host = load_settings({"home": tmp_path, "pool_namespace": True, "collector_port": 9618}, environ={})
    assert pool_address(on_a_host) == "10.37.146.254"


def test_no_simulated_host_takes_the_pools_own_address_or_name():
    assert _free_number({str(n): {"number": n} for n in range(2, 253)}) == 253
    with pytest.raises(PoolError):
        _free_number({str(n): {"number": n} for n in range(2, 254)})
    with pytest.raises(PoolError):
        _check_name("pool")


def test_a_bridged_central_manager_listens_on_its_bridge_and_lets_token_nodes_advertise_only():
    cfg = knobs(render_daemon_config(node(address="10.37.146.1", central_manager="10.37.146.1",
                                          remote_nodes="10.37.146.*")))

    assert cfg["NETWORK_INTERFACE"] == "10.37.146.1" and cfg["BIND_ALL_INTERFACES"] == "False"
    assert cfg["COLLECTOR_HOST"] == "10.37.146.1:9618"
    assert "execute-node@$(UID_DOMAIN)/10.37.146.*" in cfg["ALLOW_ADVERTISE_STARTD"]
    assert "execute-node@$(UID_DOMAIN)/10.37.146.*" in cfg["ALLOW_ADVERTISE_MASTER"]
    for level in ("ALLOW_WRITE", "ALLOW_ADMINISTRATOR", "ALLOW_DAEMON", "ALLOW_NEGOTIATOR"):
        assert "execute-node" not in cfg[level]
    assert "batch@$(UID_DOMAIN)/10.37.146.1" in render_daemon_config(node(address="10.37.146.1"))
    # The gateway's identity may come from another host of the subnet (the pool on a host of its own).
    for level in ("ALLOW_WRITE", "ALLOW_READ", "ALLOW_ADMINISTRATOR"):
        assert "batch@$(UID_DOMAIN)/10.37.146.*" in cfg[level]


def test_a_loopback_pool_lets_no_node_of_another_host_join():
    cfg = knobs(render_daemon_config(node()))

    assert "ALLOW_ADVERTISE_STARTD" not in cfg and "execute-node" not in render_daemon_config(node())


def test_a_node_on_its_own_host_proves_itself_with_its_token_only():
    cfg = knobs(render_daemon_config(node(role="execute", node="n1", address="10.37.146.2",
                                          central_manager="10.37.146.1", host_name="n1")))

    assert cfg["NETWORK_INTERFACE"] == "10.37.146.2" and cfg["NETWORK_HOSTNAME"] == "n1"
    assert cfg["COLLECTOR_HOST"] == "10.37.146.1:9618"
    assert cfg["SEC_CLIENT_AUTHENTICATION_METHODS"] == "IDTOKENS"
    assert "STARTD_NAME" not in cfg  # its slots are slot1@n1: the worker is named as the host
    assert cfg["DAEMON_LIST"] == "MASTER STARTD"
    # A graceful drain lets its running jobs finish.
    assert cfg["MAXJOBRETIREMENTTIME"] == "24 * 3600"


def test_leases_are_htcondors_defaults_unless_set():
    default = knobs(render_daemon_config(node()))
    short = knobs(render_daemon_config(node(job_lease_seconds=20, ad_lifetime_seconds=30)))

    assert default["JOB_DEFAULT_LEASE_DURATION"] == "2400" and default["CLASSAD_LIFETIME"] == "900"
    assert short["JOB_DEFAULT_LEASE_DURATION"] == "20" and short["CLASSAD_LIFETIME"] == "30"
    client = knobs(render_client_config(collector_port=9618, token_dir=Path("/t"), job_lease_seconds=20))
    assert client["JOB_DEFAULT_LEASE_DURATION"] == "20"


@pytest.mark.parametrize("bad", [{"address": "0.0.0.0.1"}, {"remote_nodes": "*"}, {"host_name": "n1"},
                                 {"job_lease_seconds": 0}])
def test_network_values_that_cannot_be_rendered_safely_are_refused(bad):
    with pytest.raises(ValueError):
        node(**bad)


@pytest.mark.parametrize("name", ["", "-a", "a b", "A", "a" * 21, "../x", "a;b"])
def test_a_host_name_must_be_a_plain_short_name(name):
    with pytest.raises(PoolError):
        _check_name(name)


def test_hosts_take_the_first_free_address():
    assert _free_number({}) == 2
    assert _free_number({"a": {"number": 2}, "b": {"number": 4}}) == 3


def test_node_config_for_a_host_needs_the_execute_role():
    with pytest.raises(ValueError):
        NodeConfig(**{**node().__dict__, "host_name": "n1"})


def _cli(tmp_path, *args):
    from click.testing import CliRunner

    from modaclouds_batch.cli import main

    return CliRunner().invoke(main, ["--home", str(tmp_path), "pool", *args],
                              env={"MODACLOUDS_BATCH_POOL_BRIDGE": "true"}, catch_exceptions=False)


def test_an_execute_node_token_needs_a_running_pool(tmp_path):
    result = _cli(tmp_path, "token", "--execute-node")

    assert result.exit_code == 1 and "the pool is not running" in result.output


def test_hosts_of_a_pool_that_never_ran_are_none_and_adding_one_says_what_to_do(tmp_path):
    assert _cli(tmp_path, "host", "list").output.strip() == "[]"
    bad = _cli(tmp_path, "host", "add", "Bad Name")
    assert bad.exit_code == 1 and "a host name is" in bad.output
