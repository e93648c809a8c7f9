"""Who may mint tokens and set limits, and the audit entry each leaves, are the services' rule:
the HTTP API, the CLI (which writes the database directly) and the gateway itself follow it."""

import json

import pytest
from click.testing import CliRunner

from modaclouds_batch.access.identity import Actor
from modaclouds_batch.cli import main
from modaclouds_batch.errors import Forbidden

from .apps import admin_client

ALICE = Actor("alice", "user")
ROOT = Actor("root", "admin")


def _audited(gateway, action):
    return [row for row in gateway.audit.entries(ROOT, user=None, action=action, since=None, limit=100)]


def test_a_user_may_not_mint_a_token_through_the_service(gateway):
    with pytest.raises(Forbidden):
        gateway.tokens.create("bob", "admin", by=ALICE)
    assert gateway.store.list_tokens() == []
    assert _audited(gateway, "token.create") == []


def test_service_made_tokens_and_revocations_are_audited(gateway):
    _, record = gateway.tokens.create("bob", by=ROOT, request_id="r-1")
    gateway.tokens.revoke(ROOT, record["id"], request_id="r-2")
    created, = _audited(gateway, "token.create")
    revoked, = _audited(gateway, "token.revoke")
    assert (created["actor"], created["target"], created["request_id"]) == ("root", record["id"], "r-1")
    assert created["detail"] == {"owner": "bob", "role": "user"}
    assert (revoked["actor"], revoked["target"], revoked["request_id"]) == ("root", record["id"], "r-2")


def test_limits_are_set_by_admins_only_and_audited(gateway):
    with pytest.raises(Forbidden):
        gateway.quota.set_limits(ALICE, "alice", {"max_active_jobs": 1000})
    assert gateway.quota.limits_for("alice")["max_active_jobs"] == gateway.settings.max_active_jobs_per_user
    limits = gateway.quota.set_limits(ROOT, "alice", {"max_active_jobs": 2})
    entry, = _audited(gateway, "limits.set")
    assert (entry["actor"], entry["target"], entry["detail"]) == ("root", "alice", limits)


def test_tokens_made_and_revoked_from_the_cli_leave_audit_entries(gateway, tmp_path):
    home = ["--home", str(tmp_path)]
    made = CliRunner().invoke(main, [*home, "token", "create", "--owner", "carol", "--json"],
                              env={}, catch_exceptions=False)
    assert made.exit_code == 0, made.output
    token_id = json.loads(made.output)["id"]
    revoked = CliRunner().invoke(main, [*home, "token", "revoke", token_id], env={}, catch_exceptions=False)
    assert revoked.exit_code == 0, revoked.output
    created, = _audited(gateway, "token.create")
    gone, = _audited(gateway, "token.revoke")
    assert created["target"] == gone["target"] == token_id
    assert created["client"].startswith("cli (") and gone["client"].startswith("cli (")
    assert created["actor"] == gone["actor"] == "anonymous"


def test_an_http_refusal_to_mint_comes_before_the_body_is_read(gateway):
    token, _ = gateway.tokens.create("alice")
    client = admin_client(gateway)
    answer = client.simulate_post("/tokens", body="not json",
                                  headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert answer.status_code == 403
