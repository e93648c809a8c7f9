import time
import uuid

import pytest
from standardwebhooks import Webhook

from modaclouds_batch.notify.delivery import Backoff, WebhookDispatcher, retry_after_seconds
from modaclouds_batch.notify.events import events_for_change
from modaclouds_batch.notify.targets import UnsafeTarget, check_url
from modaclouds_batch.settings import Settings
from modaclouds_batch.store import JobChange, Store
from modaclouds_batch.timefmt import now_iso

from ..receiver import Receiver

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def make(tmp_path, **overrides):
    settings = Settings(home=tmp_path, webhook_secret=SECRET, webhook_timeout=1.0,
                        webhook_backoff_initial=0.1, webhook_backoff_max=0.5, **overrides).resolved()
    store = Store(settings.db_path, on_state_change=lambda job: events_for_change(job, "http://gw:5000"))
    return store, WebhookDispatcher(store, settings, workers=4)


def add_job(store, url, events="final"):
    job_id = str(uuid.uuid4())
    now = now_iso()
    store.insert_job({"id": job_id, "name": "j", "owner": "a", "state": "idle", "cluster_id": 7, "proc_id": 0,
                      "arguments": "[]", "created_at": now, "updated_at": now,
                      "notification_url": url, "notification_events": events})
    return job_id


def finish(store, job_id, state="completed", exit_status=0):
    store.apply_job_changes([JobChange(job_id, {"exit_status": exit_status, "outputs_retrieved_at": now_iso()},
                                       state, "done")])


def run_until_idle(dispatcher, timeout=10.0):
    dispatcher.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if dispatcher.store.next_notification_due() is None:
                return
            time.sleep(0.05)
    finally:
        dispatcher.shutdown()


def test_final_state_writes_one_event_in_the_same_transaction(tmp_path):
    store, _ = make(tmp_path)
    job_id = add_job(store, "http://127.0.0.1:9/hook")
    assert store.job_notifications(job_id) == []
    finish(store, job_id)
    [event] = store.job_notifications(job_id)
    assert event["event_type"] == "job.completed"
    payload = event["payload"]
    assert payload["job-uuid"] == job_id and payload["retcode"] == 0
    assert payload["links"]["artifacts"]["stdout"] == f"http://gw:5000/jobs/{job_id}/artifacts/stdout"


def test_all_events_mode_notifies_every_state(tmp_path):
    store, _ = make(tmp_path)
    job_id = add_job(store, "http://127.0.0.1:9/hook", events="all")
    store.apply_job_changes([JobChange(job_id, {}, "running", None)])
    finish(store, job_id)
    assert [e["event_type"] for e in store.job_notifications(job_id)] == ["job.idle", "job.running", "job.completed"]


def test_delivery_is_signed_and_verifiable_with_standardwebhooks(tmp_path, receiver):
    store, dispatcher = make(tmp_path)
    job_id = add_job(store, receiver.url + "/hook")
    finish(store, job_id)
    run_until_idle(dispatcher)
    [request] = receiver.wait_for(1)
    payload = Webhook(SECRET).verify(request["body"], request["headers"])
    assert payload["job-uuid"] == job_id
    assert request["headers"]["webhook-id"].startswith("msg_")
    assert store.job_notifications(job_id)[0]["status"] == "delivered"


def test_failing_receiver_is_retried_with_every_attempt_recorded(tmp_path, receiver):
    store, dispatcher = make(tmp_path)
    receiver.behaviour = "error"
    job_id = add_job(store, receiver.url + "/hook")
    finish(store, job_id)
    dispatcher.start()
    try:
        time.sleep(1.5)
        receiver.behaviour = "ok"
        receiver.wait_for(1, timeout=10)
    finally:
        dispatcher.shutdown()
    event = store.job_notifications(job_id)[0]
    codes = [a["status_code"] for a in event["attempts_log"]]
    assert codes[0] == 500 and len(codes) >= 2
    ids = {r["headers"]["webhook-id"] for r in receiver.requests}
    assert ids == {event["id"]}  # one stable id across retries


def test_hanging_receiver_does_not_delay_others(tmp_path, receiver):
    store, dispatcher = make(tmp_path)
    receiver.hang_seconds = 5
    receiver.paths["/slow"] = "slow"
    slow = add_job(store, receiver.url + "/slow")
    fast = add_job(store, receiver.url + "/fast")
    finish(store, slow)
    finish(store, fast)
    dispatcher.start()
    try:
        started = time.monotonic()
        receiver.wait_for(1, path="/fast", timeout=5)
        assert time.monotonic() - started < 2.0
    finally:
        dispatcher.shutdown()
    # the slow one timed out after webhook_timeout and is scheduled again, with the error kept
    time.sleep(1.2)
    event = store.job_notifications(slow)[0]
    assert event["status"] == "pending" and "Timeout" in (event["last_error"] or "")


def test_gives_up_after_the_configured_time(tmp_path, receiver):
    store, dispatcher = make(tmp_path, webhook_give_up_after=0.0)
    receiver.behaviour = "error"
    job_id = add_job(store, receiver.url + "/hook")
    finish(store, job_id)
    event = store.due_notifications(now_iso(), 10)[0]
    time.sleep(0.01)
    assert dispatcher.deliver(event) == "failed"
    assert "gave up after 1 attempts" in store.job_notifications(job_id)[0]["last_error"]


def test_retry_after_is_honoured(tmp_path, receiver):
    store, dispatcher = make(tmp_path)
    receiver.behaviour = "retry_after"
    job_id = add_job(store, receiver.url + "/hook")
    finish(store, job_id)
    dispatcher.deliver(store.due_notifications(now_iso(), 10)[0])
    event = store.job_notifications(job_id)[0]
    assert event["next_attempt_at"] >= event["attempts_log"][0]["at"][:17]  # same minute at least
    from modaclouds_batch.timefmt import parse_iso
    wait = (parse_iso(event["next_attempt_at"]) - parse_iso(event["attempts_log"][0]["at"])).total_seconds()
    assert wait >= 1.0  # the receiver's Retry-After, above the 0.1 s backoff


def test_resend_requeues_with_the_same_id(tmp_path, receiver):
    store, dispatcher = make(tmp_path)
    job_id = add_job(store, receiver.url + "/hook")
    finish(store, job_id)
    event_id = store.job_notifications(job_id)[0]["id"]
    dispatcher.deliver(store.due_notifications(now_iso(), 10)[0])
    assert store.requeue_notification(job_id, event_id, now_iso())
    dispatcher.deliver(store.due_notifications(now_iso(), 10)[0])
    assert [r["headers"]["webhook-id"] for r in receiver.requests] == [event_id, event_id]
    assert not store.requeue_notification(job_id, "msg_unknown", now_iso())


def test_private_targets_follow_the_policy():
    assert check_url("http://127.0.0.1:8000/x", allow_private=True)
    with pytest.raises(UnsafeTarget, match="private or loopback"):
        check_url("http://127.0.0.1:8000/x", allow_private=False)
    with pytest.raises(UnsafeTarget, match="private or loopback"):
        check_url("http://10.1.2.3/x", allow_private=False)
    with pytest.raises(UnsafeTarget, match="http"):
        check_url("file:///etc/passwd", allow_private=True)
    with pytest.raises(UnsafeTarget, match="credentials"):
        check_url("http://user:pw@example.org/", allow_private=True)


def test_loopback_gateway_allows_private_targets_by_default(tmp_path):
    assert Settings(home=tmp_path, host="127.0.0.1").private_webhooks_allowed
    assert not Settings(home=tmp_path, host="0.0.0.0").private_webhooks_allowed
    assert Settings(home=tmp_path, host="0.0.0.0", webhook_allow_private=True).private_webhooks_allowed


def test_backoff_grows_and_is_capped():
    backoff = Backoff(initial=1.0, maximum=30.0)
    assert 1.0 <= backoff.delay(1) <= 3.0
    assert backoff.delay(10) <= 31.0
    assert backoff.delay(4) > backoff.delay(1) - 1.0


def test_retry_after_header_forms():
    assert retry_after_seconds("5") == 5.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("999999") == 3600.0
