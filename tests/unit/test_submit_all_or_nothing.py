"""A submission is all or nothing (JobSubmission.submit): when the schedd refuses it, does not
answer, or accepts it but the store cannot record it, nothing is left: no job row, no job
folder, no intent, no quota charge, and no cluster in the schedd."""

import pytest

from modaclouds_batch.condor.schedd import CondorRefused

from .apps import admin_client
from .fakes import FakeCondor, use_condor


class RefusingCondor(FakeCondor):
    def submit_spooled(self, description, itemdata=None):
        self._trip("submit", "")
        raise CondorRefused("submit: the schedd refused the job")


class Crash(Exception):
    pass


def nothing_left(gateway):
    jobs_dir = gateway.settings.jobs_dir
    assert gateway.store.count_jobs() == 0
    assert not jobs_dir.exists() or [p.name for p in jobs_dir.iterdir()] == []
    assert gateway.store.usage("admin", ["idle"], "")["charged_jobs"] == 0
    assert gateway.store.clear_intents() == 0
    assert gateway.condor.queue == {}


BODIES = {"one job": {"command": "true"}, "an array": {"command": "true", "count": 3}}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_a_refused_submission_leaves_nothing(gateway, body):
    use_condor(gateway, RefusingCondor())
    resp = admin_client(gateway).simulate_post("/jobs", json=body)
    assert resp.status_code == 502
    assert "refused" in resp.json["error"]
    nothing_left(gateway)


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_a_submission_the_schedd_does_not_answer_leaves_nothing(gateway, body):
    condor = use_condor(gateway, FakeCondor())
    condor.fail.add("submit")
    resp = admin_client(gateway).simulate_post("/jobs", json=body)
    assert resp.status_code == 503
    nothing_left(gateway)


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_a_submission_the_store_cannot_record_leaves_nothing_and_removes_the_cluster(gateway, body, monkeypatch):
    condor = use_condor(gateway, FakeCondor())

    def insert_fails(*args, **kw):
        assert len(condor.queue) == (body.get("count") or 1)  # the schedd has accepted them
        raise Crash("the disk is full")

    monkeypatch.setattr(gateway.store, "insert_jobs", insert_fails)
    resp = admin_client(gateway).simulate_post("/jobs", json=body)
    assert resp.status_code == 500
    nothing_left(gateway)
    removed = list(condor.history_ads.values())
    assert len(removed) == (body.get("count") or 1) and all(ad["JobStatus"] == 3 for ad in removed)


def test_other_clusters_survive_the_removal_of_one_that_could_not_be_recorded(gateway, monkeypatch):
    condor = use_condor(gateway, FakeCondor())
    client = admin_client(gateway)
    kept = client.simulate_post("/jobs", json={"command": "true"}).json["job_id"]
    monkeypatch.setattr(gateway.store, "insert_jobs", lambda *a, **kw: (_ for _ in ()).throw(Crash("full")))
    assert client.simulate_post("/jobs", json={"command": "true"}).status_code == 500
    assert list(condor.queue) == [kept]
