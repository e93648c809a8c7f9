"""The pool's pure parts: config rendering, finding the Debian mirror, choosing the mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from modaclouds_batch.condor.pool import PoolError, render_daemon_config
from modaclouds_batch.condor.pool.config import (NodeConfig, configured_execute_accounts, execute_accounts,
                                                 render_client_config)
from modaclouds_batch.condor.pool.layout import PoolLayout
from modaclouds_batch.condor.pool.mirror import find_debian_mirror
from modaclouds_batch.condor.pool.mounts import mount_points
from modaclouds_batch.condor.pool.probe import count_slots
from modaclouds_batch.condor.pool.runtime import (EXECUTE_IDS_PER_POOL, execute_uid_base, free_id,
                                                  select_mode)
from modaclouds_batch.settings import load_settings


def knobs(text: str) -> dict[str, str]:
    """``NAME = value`` lines of a rendered config (last one wins, as in HTCondor)."""
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            out[name.strip().upper()] = value.strip()
    return out


def node(**overrides) -> NodeConfig:
    base = dict(role="all", node="main", local_dir=Path("/pool/condor/main"),
                password_dir=Path("/pool/condor/passwords.d"),
                system_token_dir=Path("/pool/condor/tokens.d"),
                uid_domain="gateway.local", pool_identity="batch",
                base_config=Path("/etc/condor/condor_config"))
    base.update(overrides)
    return NodeConfig(**base)


# --- the daemon config ---------------------------------------------------------------------


def test_the_single_node_runs_every_role_on_loopback_with_fixed_ports():
    cfg = knobs(render_daemon_config(node(collector_port=9618, schedd_port=9619)))

    assert cfg["DAEMON_LIST"] == "MASTER COLLECTOR NEGOTIATOR SCHEDD STARTD"
    assert cfg["CONDOR_HOST"] == "127.0.0.1"
    assert cfg["COLLECTOR_HOST"] == "127.0.0.1:9618"
    assert cfg["SCHEDD_ARGS"] == "-p 9619"
    assert cfg["NETWORK_INTERFACE"] == "127.0.0.1"
    assert cfg["BIND_ALL_INTERFACES"] == "False"
    assert cfg["USE_SHARED_PORT"] == "False"


def test_the_installations_config_is_read_first_so_ours_overrides_it():
    text = render_daemon_config(node(base_config=Path("/etc/condor/condor_config")))

    include = text.index("include : /etc/condor/condor_config")
    assert include < text.index("DAEMON_LIST")
    assert "include" not in render_daemon_config(node(base_config=None))


def test_the_installations_local_config_files_cannot_override_ours():
    # HTCondor reads LOCAL_CONFIG_DIR/FILE after the top-level file: Debian's config.d
    # would otherwise reset ALLOW_WRITE and ALLOW_READ to "*".
    cfg = knobs(render_daemon_config(node(base_config=Path("/etc/condor/condor_config"))))

    assert cfg["LOCAL_CONFIG_DIR"] == "" and cfg["LOCAL_CONFIG_FILE"] == ""


def test_jobs_can_start_where_unshare_is_forbidden():
    cfg = knobs(render_daemon_config(node()))

    assert cfg["MOUNT_UNDER_SCRATCH"] == ""
    assert cfg["USE_PID_NAMESPACES"] == "False"


def test_jobs_run_at_once_and_are_never_preempted_but_can_be_suspended():
    cfg = knobs(render_daemon_config(node()))

    assert cfg["START"] == "True"
    assert cfg["PREEMPT"] == cfg["KILL"] == cfg["SUSPEND"] == "False"
    assert cfg["WANT_SUSPEND"] == "True"
    assert cfg["NEGOTIATOR_CONSIDER_PREEMPTION"] == "False"
    assert int(cfg["NEGOTIATOR_INTERVAL"]) <= 2 and int(cfg["SCHEDD_INTERVAL"]) <= 2
    assert cfg["RUNBENCHMARKS"] == "False" and cfg["BENCHMARKS_JOBLIST"] == ""


def test_eight_cores_in_one_partitionable_slot_and_the_runtimes_are_advertised():
    cfg = knobs(render_daemon_config(node(num_cpus=8, runtimes=("bash", "python3"))))

    assert cfg["NUM_CPUS"] == "8"
    assert cfg["SLOT_TYPE_1_PARTITIONABLE"] == "True"
    assert cfg["GATEWAYRUNTIMES"] == '"bash,python3"'
    assert "GatewayRuntimes" in cfg["STARTD_ATTRS"].split()


def test_security_is_tokens_and_local_accounts_never_trust_everybody():
    cfg = knobs(render_daemon_config(node(uid_domain="gateway.local", pool_identity="batch")))

    assert cfg["SEC_DEFAULT_AUTHENTICATION_METHODS"] == "FS, IDTOKENS"
    assert cfg["SEC_DEFAULT_AUTHENTICATION"] == "REQUIRED"
    assert cfg["UID_DOMAIN"] == "gateway.local" and cfg["TRUST_UID_DOMAIN"] == "True"
    assert "batch@$(UID_DOMAIN)/127.0.0.1" in cfg["ALLOW_WRITE"]
    for level in ("ALLOW_READ", "ALLOW_WRITE", "ALLOW_DAEMON", "ALLOW_ADMINISTRATOR", "ALLOW_NEGOTIATOR"):
        assert cfg[level] not in ("*", "*/*", "*@*")
    assert "CLAIMTOBE" not in render_daemon_config(node())
    assert "ANONYMOUS" not in render_daemon_config(node())


def test_state_lives_in_the_nodes_own_folder():
    cfg = knobs(render_daemon_config(node(local_dir=Path("/srv/pool/condor/main"))))

    assert cfg["LOCAL_DIR"] == "/srv/pool/condor/main"
    assert cfg["LOG"] == "$(LOCAL_DIR)/log" and cfg["EXECUTE"] == "$(LOCAL_DIR)/execute"
    assert cfg["SEC_PASSWORD_DIRECTORY"] == "/pool/condor/passwords.d"


def test_an_execute_node_runs_only_a_named_startd_in_the_same_pool():
    main = knobs(render_daemon_config(node()))
    extra = knobs(render_daemon_config(node(role="execute", node="exec2",
                                            local_dir=Path("/pool/condor/exec2"))))

    assert extra["DAEMON_LIST"] == "MASTER STARTD"
    assert extra["STARTD_NAME"] == extra["MASTER_NAME"] == "exec2"
    assert "SCHEDD_ARGS" not in extra
    assert extra["COLLECTOR_HOST"] == main["COLLECTOR_HOST"]
    assert extra["SEC_PASSWORD_DIRECTORY"] == main["SEC_PASSWORD_DIRECTORY"]
    assert extra["LOCAL_DIR"] != main["LOCAL_DIR"]


@pytest.mark.parametrize("bad", [dict(role="submit"), dict(node="a b"), dict(runtimes=("a,b",))])
def test_a_config_that_cannot_be_rendered_safely_is_refused(bad):
    with pytest.raises(ValueError):
        node(**bad)


def test_the_client_config_authenticates_with_the_token_beside_it():
    cfg = knobs(render_client_config(collector_port=9618, token_dir=Path("/pool/client/tokens.d")))

    assert cfg["COLLECTOR_HOST"] == "127.0.0.1:9618"
    assert cfg["SEC_CLIENT_AUTHENTICATION_METHODS"] == "IDTOKENS"
    assert cfg["SEC_TOKEN_DIRECTORY"] == "/pool/client/tokens.d"


def test_the_default_client_config_is_the_one_the_gateway_reads(tmp_path):
    settings = load_settings(overrides={"home": tmp_path}, environ={})
    layout = PoolLayout.from_settings(settings)

    assert layout.client_config == settings.condor_config == tmp_path / "pool" / "client" / "condor_config"
    assert layout.client_token_dir == settings.condor_config.parent / "tokens.d"
    assert tmp_path / "pool" in layout.log_dir().parents


# --- the Debian mirror ---------------------------------------------------------------------

BOOKWORM_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example.org/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main
"""

NODESOURCE_SOURCES = """\
Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
"""


def test_the_mirror_is_the_main_suites_uri_from_deb822_sources():
    sources = [("nodesource.sources", NODESOURCE_SOURCES), ("debian.sources", BOOKWORM_SOURCES)]

    assert find_debian_mirror(sources, "bookworm") == "http://mirror.example.org/debian"


def test_security_updates_and_disabled_stanzas_are_not_the_mirror():
    sources = [("debian.sources", "Types: deb\nURIs: http://sec.example.org/debian-security\n"
                "Suites: bookworm-security\n\nTypes: deb\nEnabled: no\nURIs: http://off.example.org/debian\n"
                "Suites: bookworm\n\nTypes: deb-src\nURIs: http://src.example.org/debian\nSuites: bookworm\n")]

    assert find_debian_mirror(sources, "bookworm") is None


def test_the_mirror_is_found_in_a_one_line_sources_list():
    sources_list = """\
# deb http://commented.example.org/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://ftp.example.net/debian bookworm main contrib
deb http://ftp.example.net/debian-security bookworm-security main
"""
    assert find_debian_mirror([("sources.list", sources_list)], "bookworm") == "http://ftp.example.net/debian"


def test_a_suite_alias_counts_even_without_knowing_the_hosts_codename():
    assert find_debian_mirror([("sources.list", "deb http://a.example/debian stable main\n")]) == "http://a.example/debian"


def test_no_debian_source_means_no_mirror():
    assert find_debian_mirror([("nodesource.sources", NODESOURCE_SOURCES)], "bookworm") is None


# --- mode selection and small helpers ------------------------------------------------------


def test_an_installed_htcondor_is_used_as_it_is():
    assert select_mode("/usr/sbin/condor_master", euid=1000) == "local"
    assert select_mode("/usr/sbin/condor_master", euid=0) == "local"


def test_without_htcondor_root_builds_a_chroot():
    assert select_mode(None, euid=0) == "chroot"


def test_without_htcondor_and_root_there_is_a_clear_error():
    with pytest.raises(PoolError, match="needs root"):
        select_mode(None, euid=1000)


def test_the_job_user_gets_an_id_nobody_else_has():
    assert free_id({0, 100, 1000}, start=50000) == 50000
    assert free_id({50000, 50001, 50003}, start=50000) == 50002


def test_slots_are_counted_in_cores_over_partitionable_and_static_slots():
    ads = [
        {"SlotType": "Partitionable", "Cpus": 5, "TotalSlotCpus": 8},
        {"SlotType": "Dynamic", "Cpus": 3, "TotalSlotCpus": 3, "State": "Claimed"},
        {"SlotType": "Static", "Cpus": 1, "TotalSlotCpus": 1, "State": "Unclaimed"},
        {"SlotType": "Static", "Cpus": 1, "TotalSlotCpus": 1, "State": "Claimed"},
    ]
    assert count_slots(ads) == (10, 6)


def test_mount_points_with_blanks_are_read_back_exactly():
    mountinfo = ("22 27 0:21 / /proc rw,relatime - proc proc rw\n"
                 "99 27 0:50 / /var/lib/my\\040pool/root rw - overlay overlay rw\n")

    assert mount_points(mountinfo) == [Path("/proc"), Path("/var/lib/my pool/root")]


# --- what `up` refuses, before touching anything --------------------------------------------


def test_too_little_disk_space_is_said_with_the_numbers(tmp_path):
    from modaclouds_batch.condor.pool.host import require_free_space

    with pytest.raises(PoolError, match=r"not enough disk space to build it: .* MB free, needs about"):
        require_free_space(tmp_path / "not-yet" / "there", 1 << 60, "to build it")


def test_without_debootstrap_and_apt_get_the_error_says_what_to_install(monkeypatch):
    from modaclouds_batch.condor.pool import rootfs

    monkeypatch.setattr(rootfs.shutil, "which", lambda name, path=None: None)

    with pytest.raises(PoolError, match="debootstrap is not installed and there is no apt-get"):
        rootfs._ensure_debootstrap(say=lambda line: None)


def test_a_half_built_or_foreign_tree_at_the_cache_path_is_never_used(tmp_path):
    from modaclouds_batch.condor.pool import rootfs

    (tmp_path / "rootfs-trixie" / "etc").mkdir(parents=True)

    with pytest.raises(PoolError, match="not a complete root filesystem"):
        rootfs.ensure_rootfs(tmp_path / "rootfs-trixie", None, say=lambda line: None)


def test_the_mirror_comes_from_the_hosts_apt_files_unless_overridden(tmp_path):
    from modaclouds_batch.condor.pool.rootfs import choose_mirror

    (tmp_path / "etc" / "apt" / "sources.list.d").mkdir(parents=True)
    (tmp_path / "etc" / "apt" / "sources.list.d" / "debian.sources").write_text(BOOKWORM_SOURCES)
    (tmp_path / "etc" / "apt" / "sources.list.d" / "nodesource.sources.disabled").write_text("junk")
    (tmp_path / "etc" / "os-release").write_text('ID=debian\nVERSION_CODENAME=bookworm\n')

    assert choose_mirror(None, root=tmp_path) == "http://mirror.example.org/debian"
    assert choose_mirror("http://other.example/debian/", root=tmp_path) == "http://other.example/debian"
    with pytest.raises(PoolError, match="--mirror"):
        choose_mirror(None, root=tmp_path / "empty")


# --- execute accounts: one Unix user per dynamic slot ------------------------------------------


def test_each_dynamic_slot_runs_its_job_as_an_account_of_its_own_never_the_owner():
    accounts = execute_accounts("batch", "main", 8)
    cfg = knobs(render_daemon_config(node(num_cpus=8, execute_accounts=accounts)))

    assert cfg["STARTER_ALLOW_RUNAS_OWNER"] == "False"
    slot_users = [cfg[f"SLOT1_{n}_USER"] for n in range(1, 9)]
    assert slot_users == [f"batch-main-{n}" for n in range(1, 9)]
    assert len(set(slot_users)) == 8 and "batch" not in slot_users
    assert "SLOT1_9_USER" not in cfg


def test_the_accounts_are_dedicated_so_the_starter_kills_what_a_job_leaves_running():
    import re

    cfg = knobs(render_daemon_config(node(num_cpus=2, execute_accounts=execute_accounts("batch", "main", 2))))

    pattern = re.compile(f"^{cfg['DEDICATED_EXECUTE_ACCOUNT_REGEXP']}$")  # the starter anchors it so
    assert pattern.match("batch-main-1") and pattern.match("batch-main-2")
    assert not pattern.match("batch") and not pattern.match("batch-exec-1a2b-1") and not pattern.match("root")
    assert cfg["STARTER_JOB_ENVIRONMENT"] == '"MODACLOUDS_BATCH_DEDICATED_ACCOUNT=1"'


def test_execute_nodes_get_accounts_of_their_own():
    main = set(execute_accounts("batch", "main", 8))
    extra = set(execute_accounts("batch", "exec-1a2b3c4d", 64))

    assert not main & extra and len(extra) == 64
    assert max(map(len, extra)) <= 32


def test_without_accounts_jobs_are_said_not_to_be_isolated():
    text = render_daemon_config(node(execute_accounts=()))

    assert "SLOT1_1_USER" not in knobs(text) and "STARTER_ALLOW_RUNAS_OWNER" not in knobs(text)
    assert "not isolated" in text


def test_a_node_needs_an_account_per_core_and_names_useradd_accepts():
    with pytest.raises(ValueError):
        node(num_cpus=8, execute_accounts=execute_accounts("batch", "main", 4))
    with pytest.raises(ValueError):
        execute_accounts("a-pool-identity-far-too-long", "exec-1a2b3c4d", 8)


def test_a_nodes_accounts_are_read_back_from_its_config_to_delete_them():
    accounts = execute_accounts("batch", "exec-1a2b3c4d", 3)
    text = render_daemon_config(node(role="execute", node="exec-1a2b3c4d", num_cpus=3, execute_accounts=accounts))

    assert configured_execute_accounts(text) == accounts


def test_execute_uids_of_two_running_pools_never_meet():
    first, second = execute_uid_base(9618), execute_uid_base(9619)

    assert first + EXECUTE_IDS_PER_POOL <= second
    assert first > 60000  # above every ordinary and Debian-reserved id


def test_jobs_cannot_read_the_queue_as_their_execute_account():
    with_accounts = knobs(render_daemon_config(node(num_cpus=2, execute_accounts=execute_accounts("batch", "main", 2))))
    without = knobs(render_daemon_config(node(execute_accounts=())))

    assert with_accounts["ALLOW_READ"] == "$(ALLOW_WRITE)"
    assert "batch-main" not in with_accounts["ALLOW_WRITE"] and "*" not in with_accounts["ALLOW_WRITE"]
    assert without["ALLOW_READ"] == "*@$(UID_DOMAIN)/127.0.0.1"


def test_the_schedd_writes_one_event_log_and_the_client_config_names_it_for_the_tracker():
    daemon = knobs(render_daemon_config(node()))
    client = knobs(render_client_config(collector_port=9618, token_dir=Path("/pool/client/tokens.d"),
                                        event_log=Path("/pool/condor/main/log/EventLog")))

    assert daemon["EVENT_LOG"] == "$(LOG)/EventLog"
    assert daemon["LOG"] == "$(LOCAL_DIR)/log"
    assert client["GATEWAY_SCHEDD_EVENT_LOG"] == "/pool/condor/main/log/EventLog"
    assert "GATEWAY_SCHEDD_EVENT_LOG" not in knobs(render_client_config(
        collector_port=9618, token_dir=Path("/pool/client/tokens.d")))
