"""The infrastructure API acts on the worker named, says what it just did, and keeps the
records of the workers it added true. The pool is a stand-in: the startd's own answer
(truth) and the collector's copy of it, which lags by an update interval."""

import classad2
import pytest

from modaclouds_batch.app import build_gateway
from modaclouds_batch.condor.collector import CollectorClient, startd_constraint
from modaclouds_batch.condor.schedd import CondorUnavailable
from modaclouds_batch.settings import load_settings
from modaclouds_batch.timefmt import now_iso

from .apps import admin_client


class FakePool:
    """Stands in for CollectorClient: startds that answer at once, a collector that lags."""

    def __init__(self, *workers: str):
        self.startds = {name: False for name in workers}  # name -> draining, as the startd says
        self.collector_copy = dict(self.startds)  # what the collector says until publish()
        self.drains: list[tuple[str, str]] = []
        self.collector_down = False
        self.round_trips = 0

    def publish(self) -> None:
        self.collector_copy = dict(self.startds)

    @staticmethod
    def _slot(name: str, draining: bool) -> dict:
        return {"Name": f"slot1@{name}", "Machine": "host", "State": "Drained" if draining else "Unclaimed",
                "Activity": "Idle", "Cpus": 2, "Memory": 1024, "GatewayRuntimes": "bash", "Draining": draining}

    def pool_ads(self):
        if self.collector_down:
            raise CondorUnavailable("collector query: connection refused")
        return [self._slot(n, d) for n, d in self.collector_copy.items()], []

    def worker_slots(self, worker):
        if worker not in self.startds:
            return None
        return [self._slot(worker, self.startds[worker])]

    def drain(self, worker, how, reason):
        if self.startds[worker]:
            raise CondorUnavailable(f"drain {worker}: Startd failed to start draining jobs.")
        self.startds[worker] = True
        self.drains.append((worker, how))
        return "1"

    def undrain(self, worker):
        self.startds[worker] = False


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def gateway(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path}, environ={}))
    gw.infra.collector = FakePool("localhost", "exec-1a2b3c4d@localhost")
    gw.infra.cache_seconds = 0
    yield gw
    gw.store.close()


@pytest.fixture
def pool(gateway):
    return gateway.infra.collector


@pytest.fixture
def client(gateway):
    return admin_client(gateway)


def drain(client, name="localhost", **kwargs):
    kwargs.setdefault("json", {"how": "quick"})
    return client.simulate_post(f"/workers/{name}/drain", **kwargs)


# --- which worker --------------------------------------------------------------------------

@pytest.mark.parametrize("name, matches", [
    ("localhost", True), ("exec-1a2b3c4d@localhost", False), ("LOCALHOST", False), ("calhost", False),
])
def test_the_startd_lookup_matches_the_name_exactly(name, matches):
    ad = classad2.ClassAd({"Name": name, "MyType": "StartD"})

    assert classad2.ExprTree(startd_constraint("localhost")).eval(ad) is matches


def test_a_name_with_regex_characters_is_a_plain_name():
    ad = classad2.ClassAd({"Name": "exec-1@localhost"})

    assert classad2.ExprTree(startd_constraint("exec-.@localhost")).eval(ad) is False
    assert classad2.ExprTree(startd_constraint('a"b')).eval(classad2.ClassAd({"Name": 'a"b'})) is True


@pytest.mark.parametrize("name", ["a\x00b", "\udc80"])
def test_a_name_no_startd_can_have_is_no_worker_without_asking_the_pool(tmp_path, name):
    collector = CollectorClient(tmp_path / "no-such-condor-config")

    assert collector.worker_slots(name) is None
    assert collector.round_trips == 0


# --- answers that follow what was just accepted -----------------------------------------------

def test_undrain_right_after_an_accepted_drain_answers_202(client, pool):
    drained = drain(client)
    assert drained.status_code == 202, drained.text
    assert drained.json["draining"] is True and pool.collector_copy["localhost"] is False

    undrained = client.simulate_post("/workers/localhost/undrain")

    assert undrained.status_code == 202, undrained.text
    assert undrained.json["draining"] is False and pool.startds["localhost"] is False


def test_a_second_drain_is_a_409_saying_already_draining(client, pool):
    assert drain(client).status_code == 202

    again = drain(client)

    assert again.status_code == 409, again.text
    assert "already" in again.json["error"]
    assert pool.drains == [("localhost", "quick")]


def test_a_drain_that_loses_a_race_with_another_is_a_409(client, pool, monkeypatch):
    real_drain = pool.drain

    def someone_else_first(worker, how, reason):
        pool.startds[worker] = True  # another admin's drain landed between the check and ours
        return real_drain(worker, how, reason)

    monkeypatch.setattr(pool, "drain", someone_else_first)

    resp = drain(client)

    assert resp.status_code == 409, resp.text
    assert "already draining" in resp.json["error"]


def test_undrain_of_a_worker_that_is_not_draining_is_a_409(client):
    resp = client.simulate_post("/workers/localhost/undrain")

    assert resp.status_code == 409
    assert "not draining" in resp.json["error"]


def test_the_lists_show_a_drain_just_accepted_until_the_collector_catches_up(client, pool):
    assert drain(client).status_code == 202

    listed = {w["name"]: w for w in client.simulate_get("/workers").json}
    summary = {w["name"]: w for w in client.simulate_get("/pool").json["per_worker"]}
    one = client.simulate_get("/workers/localhost").json

    assert listed["localhost"]["draining"] is True and listed["localhost"]["state"] == "drained"
    assert summary["localhost"]["state"] == "drained"
    assert one["draining"] is True
    assert listed["exec-1a2b3c4d@localhost"]["draining"] is False


def test_once_the_collector_agrees_its_answer_is_used_again(client, pool, gateway):
    assert drain(client).status_code == 202
    pool.publish()
    client.simulate_get("/workers")  # the collector agrees: the stand-in is dropped
    pool.collector_copy["localhost"] = False  # a later change the gateway did not make

    listed = {w["name"]: w for w in client.simulate_get("/workers").json}

    assert listed["localhost"]["draining"] is False
    assert gateway.infra._fresh == {}


def test_a_worker_the_collector_does_not_know_is_404(client):
    assert drain(client, "localhos").status_code == 404
    assert client.simulate_get("/workers/exec-1a2b3c4d").status_code == 404


# --- bodies the route cannot read -----------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {"Content-Type": "application/x-www-form-urlencoded"},  # what `curl -d` sends
    {"Content-Type": "text/plain"},
    {},
])
def test_a_drain_body_that_is_not_json_is_a_415_and_drains_nothing(client, pool, headers):
    resp = drain(client, json=None, body='{"how": "bogus"}', headers=headers)

    assert resp.status_code == 415, resp.text
    assert "application/json" in resp.json["error"]
    assert pool.drains == []


def test_a_json_drain_body_with_a_charset_is_read(client, pool):
    resp = drain(client, json=None, body='{"how": "fast"}', headers={"Content-Type": "application/json; charset=utf-8"})

    assert resp.status_code == 202, resp.text
    assert pool.drains == [("localhost", "fast")]


def test_a_drain_without_a_body_is_graceful(client, pool):
    assert drain(client, json=None).status_code == 202
    assert pool.drains == [("localhost", "graceful")]


def test_a_null_how_takes_the_query_string_s(client, pool):
    assert drain(client, json={"how": None}, params={"how": "fast"}).status_code == 202
    assert pool.drains == [("localhost", "fast")]


@pytest.mark.parametrize("how", ["bogus", [], "", 3, {"how": "fast"}])
def test_an_unknown_how_is_a_400_naming_the_field(client, pool, how):
    resp = drain(client, json={"how": how})

    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == "how"
    assert pool.drains == []


def test_other_json_routes_refuse_a_form_body_too(client):
    resp = client.simulate_post("/workers", body="provider=local",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert resp.status_code == 415, resp.text


# --- workers the gateway added that left the pool ------------------------------------------------

class Provider:
    name = "local"

    def __init__(self):
        self.running = True

    def is_running(self, worker):
        return self.running

    def retire(self, worker):
        self.running = False


@pytest.fixture
def added(gateway):
    """A worker the gateway started, as /workers/requests records it; a clock to move."""
    provider = Provider()
    gateway.infra.providers["local"] = provider
    gateway.infra._clock = clock = Clock()
    gateway.store.insert_worker_request({
        "id": "req-1", "action": "provision", "provider": "local", "requested_by": "admin", "params": {},
        "status": "ready", "worker": "exec-1a2b3c4d@localhost", "created_at": now_iso(), "finished_at": now_iso()})
    return provider, clock


def record(gateway):
    return next(r for r in gateway.store.worker_requests() if r["id"] == "req-1")


def test_an_added_worker_gone_from_the_collector_for_a_while_is_marked_lost(gateway, pool, added):
    _, clock = added
    del pool.collector_copy["exec-1a2b3c4d@localhost"]  # the pool restarted without it

    assert gateway.infra.check_added_workers() == 0
    clock.now += gateway.infra.lost_after - 1
    assert gateway.infra.check_added_workers() == 0
    assert record(gateway)["status"] == "ready"
    clock.now += 2
    assert gateway.infra.check_added_workers() == 1

    lost = record(gateway)
    assert lost["status"] == "lost" and lost["lost_at"]
    assert "missing from the collector" in lost["error"]
    assert gateway.infra.check_added_workers() == 0  # said once


def test_a_lost_worker_that_comes_back_is_ready_again(gateway, pool, added):
    _, clock = added
    del pool.collector_copy["exec-1a2b3c4d@localhost"]
    gateway.infra.check_added_workers()
    clock.now += gateway.infra.lost_after + 1
    gateway.infra.check_added_workers()
    pool.publish()

    assert gateway.infra.check_added_workers() == 1
    assert record(gateway)["status"] == "ready" and record(gateway)["error"] is None


def test_at_start_a_worker_whose_node_does_not_run_is_lost_at_once(gateway, pool, added):
    provider, _ = added
    provider.running = False
    del pool.collector_copy["exec-1a2b3c4d@localhost"]
    pool.collector_down = True  # even before the collector answers

    assert gateway.infra.check_added_workers(at_start=True) == 1
    assert "not running" in record(gateway)["error"]


def test_a_silent_collector_marks_nothing_lost(gateway, pool, added):
    _, clock = added
    pool.collector_down = True
    for _ in range(3):
        clock.now += gateway.infra.lost_after
        assert gateway.infra.check_added_workers() == 0
    assert record(gateway)["status"] == "ready"


def test_a_lost_worker_can_still_be_retired(gateway, pool, added, client):
    _, clock = added
    del pool.collector_copy["exec-1a2b3c4d@localhost"]
    gateway.infra.check_added_workers()
    clock.now += gateway.infra.lost_after + 1
    gateway.infra.check_added_workers()

    resp = client.simulate_delete("/workers/exec-1a2b3c4d@localhost")

    assert resp.status_code == 202, resp.text
