"""What one POST /jobs costs the gateway's database (issue 20): counted statements and
durable commits, never timings."""

from __future__ import annotations

import pytest

from modaclouds_batch.app import build_gateway
from modaclouds_batch.settings import load_settings

from .apps import admin_client
from .fakes import FakeCondor, use_condor


@pytest.fixture
def submitting(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path}, environ={}))
    use_condor(gw, FakeCondor())
    client = admin_client(gw)
    assert client.simulate_post("/jobs", json={"command": "echo warm"}).status_code == 201
    yield gw, client
    gw.store.close()


def _statements_of(gw, submit):
    statements: list[str] = []
    with gw.store.tracing(statements.append):
        response = submit()
    assert response.status_code == 201, response.text
    return statements


def test_a_submission_writes_its_rows_without_table_introspection(submitting):
    """sqlite-utils' insert_all reads sqlite_master (three to five selects) and opens a savepoint
    for every table it writes; the submission's rows are plain INSERTs of known columns."""
    gw, client = submitting
    statements = _statements_of(gw, lambda: client.simulate_post("/jobs", json={"command": "echo hi", "name": "p"}))
    assert [s for s in statements if "sqlite_master" in s] == []
    assert [s for s in statements if s.upper().startswith(("SAVEPOINT SQLITE_UTILS_", "RELEASE SAVEPOINT"))] == []
    assert any(s.startswith('insert into "jobs"') for s in statements)


def test_an_array_with_dependencies_writes_no_introspection_either(submitting):
    gw, client = submitting
    first = client.simulate_post("/jobs", json={"command": "echo first"}).json
    responses = []
    statements = _statements_of(gw, lambda: responses.append(client.simulate_post(
        "/jobs", json={"command": "echo $1", "array": [["a"], ["b"]], "after_any": [first["id"]]})) or responses[0])
    assert [s for s in statements if "sqlite_master" in s] == []
    items = responses[0].json["job_ids"]
    assert len(items) == 2
    assert gw.store.dependencies_of(items) == {item: [(first["id"], "afterany")] for item in items}
    assert all(gw.store.job_events(item)[0]["state"] == "idle" for item in items)


@pytest.mark.parametrize("headers", [{}, {"Idempotency-Key": "k-1"}], ids=["plain", "keyed"])
def test_a_submission_commits_durably_twice_only(submitting, headers):
    """Durable (synchronous = FULL) before the schedd submit: the intents, with the key tied to
    them in the same commit; after it: the job rows. Nothing else waits for the disk."""
    gw, client = submitting
    statements = _statements_of(gw, lambda: client.simulate_post("/jobs", json={"command": "echo hi"},
                                                                 headers=headers))
    full = [i for i, s in enumerate(statements) if s == "PRAGMA synchronous = FULL"]
    assert len(full) == 2
    first = statements[full[0]:statements.index("PRAGMA synchronous = NORMAL", full[0])]
    assert any("submission_intents" in s for s in first)
    assert any(s.startswith("update idempotency_keys set job_ids") for s in first) == bool(headers)


def test_a_submission_releases_no_charge_its_job_rows_consumed(submitting):
    """The charge that held the job's place goes with the job rows' commit; releasing it after
    would be one more write transaction queued behind other submissions' commits for nothing."""
    gw, client = submitting
    statements = _statements_of(gw, lambda: client.simulate_post("/jobs", json={"command": "echo hi"}))
    deletes = [i for i, s in enumerate(statements) if s.startswith("delete from charges")]
    assert len(deletes) == 1
    assert statements.index("PRAGMA synchronous = FULL", statements.index("PRAGMA synchronous = NORMAL")) < deletes[0]
    assert gw.store.db.execute("select count(*) from charges").fetchone()[0] == 0


def test_a_submission_the_schedd_fails_releases_its_charge(submitting):
    gw, client = submitting
    gw.condor.fail.add("submit")
    statements: list[str] = []
    with gw.store.tracing(statements.append):
        response = client.simulate_post("/jobs", json={"command": "echo hi"})
    assert response.status_code == 503, response.text
    assert any(s.startswith("delete from charges") for s in statements)
    assert gw.store.db.execute("select count(*) from charges").fetchone()[0] == 0
