"""Per-user signing secrets and the owner's control over notifications (issue 19, items 2 and 3)."""

from __future__ import annotations

import json
import time
import uuid

import falcon.testing
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from modaclouds_batch.app import build_gateway, create_app
from modaclouds_batch.notify.delivery import WebhookDispatcher
from modaclouds_batch.notify.events import events_for_change
from modaclouds_batch.notify.signing import new_secret
from modaclouds_batch.settings import Settings, load_settings
from modaclouds_batch.store import JobChange, Store
from modaclouds_batch.timefmt import now_iso

from ..receiver import Receiver

OPERATOR_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def make(tmp_path, **overrides):
    values = {"webhook_timeout": 2.0, "webhook_backoff_initial": 0.1, "webhook_backoff_max": 0.5,
              "webhook_allow_private": True, **overrides}
    settings = Settings(home=tmp_path, **values).resolved()
    store = Store(settings.db_path, on_state_change=lambda job: events_for_change(job, "http://gw:5000"))
    return store, WebhookDispatcher(store, settings, workers=2)


def finished_job(store, url, owner):
    job_id = str(uuid.uuid4())
    now = now_iso()
    store.insert_job({"id": job_id, "name": "j", "owner": owner, "state": "idle", "cluster_id": 7, "proc_id": 0,
                      "arguments": "[]", "created_at": now, "updated_at": now, "notification_url": url})
    store.apply_job_changes([JobChange(job_id, {"exit_status": 0, "outputs_retrieved_at": now_iso()},
                                       "completed", "done")])
    return job_id


def deliver_due(store, dispatcher):
    return [dispatcher.deliver(event) for event in store.due_notifications(now_iso(), 10)]


def verifies(secret, request) -> bool:
    try:
        Webhook(secret).verify(request["body"], request["headers"])
        return True
    except WebhookVerificationError:
        return False


# --- secrets ----------------------------------------------------------------------------


def test_a_secret_is_standard_webhooks_shaped_and_random():
    one, two = new_secret(), new_secret()
    assert one.startswith("whsec_") and one != two
    Webhook(one)  # the package accepts it
    import base64
    assert len(base64.b64decode(one.removeprefix("whsec_"))) >= 24


def test_each_users_notifications_verify_only_with_their_own_secret(tmp_path, receiver):
    store, dispatcher = make(tmp_path)
    secrets = dispatcher.secrets
    alice, bob = (secrets.current(_actor(name))["secret"] for name in ("alice", "bob"))
    assert alice != bob
    finished_job(store, receiver.url + "/alice", "alice")
    finished_job(store, receiver.url + "/bob", "bob")
    assert deliver_due(store, dispatcher) == ["delivered", "delivered"]
    [to_alice] = receiver.delivered("/alice")
    [to_bob] = receiver.delivered("/bob")
    assert verifies(alice, to_alice) and not verifies(bob, to_alice)
    assert verifies(bob, to_bob) and not verifies(alice, to_bob)


def test_a_secret_is_made_at_the_first_notification_and_is_the_one_read_later(tmp_path, receiver):
    store, dispatcher = make(tmp_path)
    finished_job(store, receiver.url + "/hook", "carol")
    deliver_due(store, dispatcher)
    [request] = receiver.delivered()
    assert verifies(dispatcher.secrets.current(_actor("carol"))["secret"], request)


def test_after_a_rotation_both_secrets_sign_during_the_overlap(tmp_path, receiver):
    store, dispatcher = make(tmp_path)
    old = dispatcher.secrets.current(_actor("alice"))["secret"]
    rotated = dispatcher.secrets.rotate(_actor("alice"))
    assert rotated["secret"] != old and rotated["previous_valid_until"] > rotated["created_at"]
    assert dispatcher.secrets.current(_actor("alice")) == rotated
    finished_job(store, receiver.url + "/hook", "alice")
    deliver_due(store, dispatcher)
    [request] = receiver.delivered()
    assert len(request["headers"]["webhook-signature"].split(" ")) == 2
    assert verifies(old, request) and verifies(rotated["secret"], request)


def test_without_an_overlap_the_old_secret_stops_signing_at_once(tmp_path, receiver):
    store, dispatcher = make(tmp_path, webhook_secret_overlap_seconds=0)
    old = dispatcher.secrets.current(_actor("alice"))["secret"]
    new = dispatcher.secrets.rotate(_actor("alice"))
    assert "previous_valid_until" not in dispatcher.secrets.current(_actor("alice"))
    finished_job(store, receiver.url + "/hook", "alice")
    deliver_due(store, dispatcher)
    [request] = receiver.delivered()
    assert verifies(new["secret"], request) and not verifies(old, request)


def test_the_operators_secret_adds_a_signature_to_every_users_notifications(tmp_path, receiver):
    store, dispatcher = make(tmp_path, webhook_secret=OPERATOR_SECRET)
    finished_job(store, receiver.url + "/hook", "alice")
    deliver_due(store, dispatcher)
    [request] = receiver.delivered()
    assert verifies(OPERATOR_SECRET, request)
    assert verifies(dispatcher.secrets.current(_actor("alice"))["secret"], request)


# --- permanent answers ---------------------------------------------------------------


def test_410_stops_delivery_after_one_attempt(tmp_path, receiver):
    store, dispatcher = make(tmp_path)
    receiver.behaviour = "gone"
    job_id = finished_job(store, receiver.url + "/hook", "alice")
    assert deliver_due(store, dispatcher) == ["failed"]
    assert deliver_due(store, dispatcher) == []
    [event] = store.job_notifications(job_id)
    assert event["attempts"] == 1
    assert event["last_error"] == event["stopped_reason"] == "receiver answered 410 Gone; delivery stopped"


def test_a_permanent_404_stops_after_the_configured_count_with_a_human_reason(tmp_path, receiver):
    store, dispatcher = make(tmp_path, webhook_permanent_failure_attempts=3, webhook_backoff_initial=0.0,
                             webhook_backoff_max=0.0)
    receiver.behaviour = "not_found"
    job_id = finished_job(store, receiver.url + "/hook", "alice")
    outcomes = []
    for _ in range(5):
        outcomes += deliver_due(store, dispatcher)
        time.sleep(0.01)
    assert outcomes == ["pending", "pending", "failed"]
    [event] = store.job_notifications(job_id)
    assert event["status"] == "failed" and event["attempts"] == 3
    assert event["stopped_reason"] == "receiver answered 404 Not Found three times; delivery stopped"
    assert "delivery stops after 3 such answers in a row" in event["attempts_log"][0]["error"]


def test_another_answer_between_permanent_ones_starts_the_count_again(tmp_path, receiver):
    store, dispatcher = make(tmp_path, webhook_permanent_failure_attempts=2, webhook_backoff_initial=0.0,
                             webhook_backoff_max=0.0)
    job_id = finished_job(store, receiver.url + "/hook", "alice")
    outcomes = []
    for behaviour in ("not_found", "error", "not_found", "not_found"):
        receiver.behaviour = behaviour
        time.sleep(0.01)
        outcomes += deliver_due(store, dispatcher)
    assert outcomes == ["pending", "pending", "pending", "failed"]
    assert store.job_notifications(job_id)[0]["stopped_reason"] == "receiver answered 404 Not Found twice; delivery stopped"


def test_a_401_hints_at_the_owners_secret(tmp_path):
    _, dispatcher = make(tmp_path)
    assert "GET /webhooks/secret" in dispatcher._refusal(401, 1)


# --- cancel and redirect in the store and the worker ------------------------------------


def test_a_cancelled_notification_is_never_sent_and_an_attempt_in_flight_does_not_revive_it(tmp_path, receiver):
    store, dispatcher = make(tmp_path)
    job_id = finished_job(store, receiver.url + "/hook", "alice")
    [event] = store.due_notifications(now_iso(), 10)
    assert store.cancel_notification(job_id, event["id"], "cancelled by alice") == "pending"
    assert dispatcher.deliver(event) == "delivered"  # the attempt that was already under way...
    [after] = store.job_notifications(job_id)
    assert after["status"] == "cancelled" and after["stopped_reason"] == "cancelled by alice"  # ...changes nothing
    assert store.due_notifications(now_iso(), 10) == []
    assert store.cancel_notification(job_id, event["id"], "again") == "cancelled"
    assert store.cancel_notification(job_id, "msg_nope", "x") is None


def test_a_redirected_notification_goes_to_the_new_url_now_and_the_job_follows(tmp_path, receiver):
    store, dispatcher = make(tmp_path)
    receiver.behaviour = "not_found"
    job_id = finished_job(store, receiver.url + "/wrong", "alice")
    deliver_due(store, dispatcher)
    [event] = store.job_notifications(job_id)
    receiver.behaviour = "ok"
    assert store.redirect_notification(job_id, event["id"], receiver.url + "/right", now_iso()) == "pending"
    assert store.get_job(job_id)["notification_url"] == receiver.url + "/right"
    assert deliver_due(store, dispatcher) == ["delivered"]
    [request] = receiver.delivered("/right")
    assert request["headers"]["webhook-id"] == event["id"]
    assert store.redirect_notification(job_id, event["id"], receiver.url + "/x", now_iso()) == "delivered"
    assert store.get_notification(job_id, event["id"])["url"] == receiver.url + "/right"


# --- over HTTP --------------------------------------------------------------------------


@pytest.fixture
def gateway(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "webhook_allow_private": True}, environ={}))
    yield gw
    gw.store.close()


def _client(gateway, owner, role="user"):
    token, _ = gateway.tokens.create(owner, role)
    return falcon.testing.TestClient(create_app(gateway), headers={"Authorization": f"Bearer {token}"})


def _actor(name):
    from modaclouds_batch.access.identity import Actor
    return Actor(name)


def test_each_user_reads_and_rotates_only_their_own_secret_and_rotation_is_audited(gateway):
    alice, bob = _client(gateway, "alice"), _client(gateway, "bob")
    first = alice.simulate_get("/webhooks/secret")
    assert first.status_code == 200 and first.json["secret"].startswith("whsec_")
    assert alice.simulate_get("/webhooks/secret").json == first.json  # made once, then kept
    assert bob.simulate_get("/webhooks/secret").json["secret"] != first.json["secret"]
    assert alice.simulate_get("/webhooks/secret", params={"owner": "bob"}).json == first.json
    rotated = alice.simulate_post("/webhooks/secret/rotate")
    assert rotated.status_code == 200 and rotated.json["secret"] != first.json["secret"]
    assert "previous_valid_until" in rotated.json and rotated.headers["cache-control"] == "no-store"
    [entry] = gateway.store.audit_entries("alice", "webhook_secret.rotate", None, 10)
    everything = json.dumps(gateway.store.audit_entries(None, None, None, 1000))
    assert first.json["secret"] not in everything and rotated.json["secret"] not in everything
    assert entry["target"] == "alice"


def test_health_says_notifications_are_signed(gateway):
    health = falcon.testing.TestClient(create_app(gateway)).simulate_get("/health").json
    assert health["webhooks"] == {"signed": True, "secret": "/webhooks/secret", "operator_secret": False}


def _job_with_pending_notification(gateway, owner, url="http://127.0.0.1:9/hook"):
    job_id = str(uuid.uuid4())
    now = now_iso()
    gateway.store.insert_job({"id": job_id, "name": "j", "owner": owner, "state": "idle", "cluster_id": 7,
                              "proc_id": 0, "arguments": "[]", "created_at": now, "updated_at": now,
                              "notification_url": url, "notification_events": "all"})
    [event] = gateway.store.job_notifications(job_id)
    return job_id, event["id"]


def test_the_job_view_summarises_its_notifications_with_a_link(gateway):
    alice = _client(gateway, "alice")
    job_id, event_id = _job_with_pending_notification(gateway, "alice")
    view = alice.simulate_get(f"/jobs/{job_id}").json
    assert view["links"]["notifications"] == f"/jobs/{job_id}/notifications"
    summary = view["notifications"]
    assert summary["signed"] is True and summary["total"] == 1 and summary["counts"] == {"pending": 1}
    [brief] = summary["recent"]
    assert brief["event_id"] == event_id and brief["status"] == "pending" and brief["attempts"] == 0
    assert brief["next_attempt_at"] and brief["last_error"] is None
    assert brief["links"] == {"cancel": f"/jobs/{job_id}/notifications/{event_id}/cancel",
                              "redirect": f"/jobs/{job_id}/notifications/{event_id}"}


def test_the_owner_cancels_and_redirects_and_other_users_get_404(gateway):
    alice, bob = _client(gateway, "alice"), _client(gateway, "bob")
    job_id, event_id = _job_with_pending_notification(gateway, "alice")
    path = f"/jobs/{job_id}/notifications/{event_id}"
    assert bob.simulate_post(f"{path}/cancel").status_code == 404
    assert bob.simulate_patch(path, json={"url": "http://127.0.0.1:10/x"}).status_code == 404
    assert bob.simulate_get(path).status_code == 404
    assert gateway.store.get_notification(job_id, event_id)["status"] == "pending"

    moved = alice.simulate_patch(path, json={"url": "http://127.0.0.1:10/new"})
    assert moved.status_code == 200 and moved.json["url"] == "http://127.0.0.1:10/new"
    assert alice.simulate_get(path).json["url"] == "http://127.0.0.1:10/new"
    cancelled = alice.simulate_post(f"{path}/cancel")
    assert cancelled.status_code == 200 and cancelled.json["status"] == "cancelled"
    assert cancelled.json["stopped_reason"].startswith("cancelled by alice")
    again = alice.simulate_post(f"{path}/cancel")
    assert again.status_code == 409 and "is cancelled; only pending ones can be cancelled" in again.json["error"]
    assert alice.simulate_patch(path, json={"url": "http://127.0.0.1:10/y"}).status_code == 409
    assert alice.simulate_post(f"/jobs/{job_id}/notifications/msg_nope/cancel").status_code == 404
    actions = [e["action"] for e in gateway.store.audit_entries("alice", None, None, 10)]
    assert "notification.cancel" in actions and "notification.redirect" in actions


@pytest.mark.parametrize("body, status, words", [
    ({"url": "http://169.254.169.254/latest/meta-data/"}, 400, "metadata"),
    ({"url": "file:///etc/passwd"}, 400, "http"),
    ({"url": "http://user:pw@example.org/"}, 400, "credentials"),
    ({"url": 7}, 400, "new URL"),
    ({}, 400, "new URL"),
    ({"url": "http://127.0.0.1:10/x", "when": "now"}, 400, "unknown field 'when'"),
])
def test_a_redirect_passes_the_url_checks_of_any_notification_url(gateway, body, status, words):
    alice = _client(gateway, "alice")
    job_id, event_id = _job_with_pending_notification(gateway, "alice")
    answer = alice.simulate_patch(f"/jobs/{job_id}/notifications/{event_id}", json=body)
    assert answer.status_code == status and words in answer.json["error"], answer.json
    assert gateway.store.get_notification(job_id, event_id)["url"] == "http://127.0.0.1:9/hook"


def test_a_redirect_to_a_private_address_is_refused_by_default(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path}, environ={}))
    try:
        alice = _client(gw, "alice")
        job_id, event_id = _job_with_pending_notification(gw, "alice", url="https://hooks.example.org/x")
        answer = alice.simulate_patch(f"/jobs/{job_id}/notifications/{event_id}", json={"url": "http://10.0.0.5/x"})
        assert answer.status_code == 400 and "webhook_allow_private" in answer.json["error"]
    finally:
        gw.store.close()


def test_without_auth_anonymous_has_a_secret_of_its_own_that_signs_its_jobs(tmp_path, receiver):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "auth": False, "webhook_allow_private": True},
                                     environ={}))
    try:
        local = falcon.testing.TestClient(create_app(gw))
        secret = local.simulate_get("/webhooks/secret").json["secret"]
        finished_job(gw.store, receiver.url + "/hook", "anonymous")
        deliver_due(gw.store, gw.webhooks)
        [request] = receiver.delivered()
        assert verifies(secret, request)
    finally:
        gw.store.close()
