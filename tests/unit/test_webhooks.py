import http.server
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid

import certifi

import pytest
from standardwebhooks import Webhook

import urllib3.util.connection

from modaclouds_batch.notify import targets
from modaclouds_batch.notify.delivery import Backoff, WebhookDispatcher, post_pinned, retry_after_seconds
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
    values = {"webhook_secret": SECRET, "webhook_timeout": 1.0, "webhook_backoff_initial": 0.1,
              "webhook_backoff_max": 0.5,
              "webhook_allow_private": True,  # the receiver listens on loopback
              **overrides}
    settings = Settings(home=tmp_path, **values).resolved()
    store = Store(settings.db_path, on_state_change=lambda job: events_for_change(job, "http://gw:5000"))
    return store, WebhookDispatcher(store, settings, workers=4)


def add_job(store, url, events="final", owner="a"):
    job_id = str(uuid.uuid4())
    now = now_iso()
    store.insert_job({"id": job_id, "name": "j", "owner": owner, "state": "idle", "cluster_id": 7, "proc_id": 0,
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
    with pytest.raises(UnsafeTarget, match="not a globally routable.*webhook_allow_private"):
        check_url("http://127.0.0.1:8000/x", allow_private=False)
    with pytest.raises(UnsafeTarget, match="not a globally routable"):
        check_url("http://10.1.2.3/x", allow_private=False)
    with pytest.raises(UnsafeTarget, match="http"):
        check_url("file:///etc/passwd", allow_private=True)
    with pytest.raises(UnsafeTarget, match="credentials"):
        check_url("http://user:pw@example.org/", allow_private=True)


@pytest.mark.parametrize("address, why", [
    ("100.64.0.1", "shared address space"),
    ("100.100.100.200", "metadata"),          # Alibaba Cloud's metadata, inside 100.64.0.0/10
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("2002:7f00:1::1", "embeds 127.0.0.1"),    # 6to4 of loopback
    ("2002:a9fe:a9fe::1", "embeds 169.254.169.254"),
    ("::ffff:10.0.0.1", "embeds 10.0.0.1"),
    ("64:ff9b::a00:1", "embeds 10.0.0.1"),     # NAT64
    ("::127.0.0.1", "embeds 127.0.0.1"),       # IPv4-compatible
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "embeds"),  # Teredo: its server 65.54.227.120, client 192.0.2.45
    ("::1", "not a globally routable"),
    ("fe80::1", "not a globally routable"),
    ("192.168.1.1", "not a globally routable"),
    ("0.0.0.0", "not a unicast"),
])
def test_only_globally_routable_addresses_are_called(address, why):
    assert why in targets.refusal(ipaddress.ip_address(address), allow_private=False)


def test_metadata_addresses_stay_refused_when_private_receivers_are_allowed():
    for address in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254", "2002:a9fe:a9fe::1"):
        assert "metadata" in targets.refusal(ipaddress.ip_address(address), allow_private=True)
    assert targets.refusal(ipaddress.ip_address("127.0.0.1"), allow_private=True) is None
    assert targets.refusal(ipaddress.ip_address("8.8.8.8"), allow_private=False) is None
    assert targets.refusal(ipaddress.ip_address("2001:4860:4860::8888"), allow_private=False) is None


def test_private_receivers_need_an_explicit_setting(tmp_path):
    assert not Settings(home=tmp_path, host="127.0.0.1").private_webhooks_allowed
    assert not Settings(home=tmp_path, host="0.0.0.0").private_webhooks_allowed
    assert Settings(home=tmp_path, host="0.0.0.0", webhook_allow_private=True).private_webhooks_allowed


def _answers(*addresses):
    return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 80)) for a in addresses]


def test_a_name_with_any_refused_address_is_refused():
    resolver = lambda host, port, **kw: _answers("93.184.216.34", "127.0.0.1")  # noqa: E731
    with pytest.raises(UnsafeTarget, match="127.0.0.1"):
        targets.resolve("mixed.test", 80, allow_private=False, resolver=resolver)


def _scripted_dns(monkeypatch, name, *answers):
    """getaddrinfo answering ``name`` with each of ``answers`` in turn (the last one after)."""
    real, calls = socket.getaddrinfo, []

    def getaddrinfo(host, port, *args, **kwargs):
        if host != name:
            return real(host, port, *args, **kwargs)
        calls.append(host)
        return _answers(answers[min(len(calls), len(answers)) - 1])

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def test_dns_rebinding_cannot_turn_a_delivery_to_loopback(tmp_path, receiver, monkeypatch):
    # The name is public when checked, loopback when looked up again: a rebinding attack.
    calls = _scripted_dns(monkeypatch, "rebind.test", "198.51.100.7", "127.0.0.1")
    monkeypatch.setattr(targets, "refusal", _treat_as_public("198.51.100.7"))
    store, dispatcher = make(tmp_path, webhook_allow_private=False)
    job_id = add_job(store, f"http://rebind.test:{receiver.port}/hook")
    finish(store, job_id)
    outcome = dispatcher.deliver(store.due_notifications(now_iso(), 10)[0])
    assert outcome == "pending" and receiver.requests == []
    assert len(calls) == 1  # resolved once, then connected to the address checked (wherever that leads)


def _treat_as_public(documentation_address):
    """The policy, except one documentation address counts as public (it routes nowhere)."""
    real = targets.refusal

    def refusal(address, *, allow_private):
        return None if str(address) == documentation_address else real(address, allow_private=allow_private)
    return refusal


def test_the_connected_peer_is_checked(receiver, monkeypatch):
    # Whatever hands back the socket (a proxy, a patched resolver...), a peer other than the
    # address checked gets no request.
    monkeypatch.setattr(urllib3.util.connection, "create_connection",
                        lambda *a, **kw: socket.create_connection(("127.0.0.1", receiver.port)))
    with pytest.raises(UnsafeTarget, match="connected to 127.0.0.1, not the checked address 8.8.8.8"):
        post_pinned(f"http://8.8.8.8:{receiver.port}/hook", b"{}", {}, timeout=2, allow_private=False)
    time.sleep(0.2)
    assert receiver.requests == []


def test_a_name_that_does_not_resolve_is_not_sent_and_retried(tmp_path, receiver, monkeypatch):
    _scripted_dns(monkeypatch, "gone.test", "127.0.0.1")
    monkeypatch.setattr(socket, "getaddrinfo", _failing(socket.getaddrinfo, "gone.test"))
    store, dispatcher = make(tmp_path)
    job_id = add_job(store, f"http://gone.test:{receiver.port}/hook")
    finish(store, job_id)
    assert dispatcher.deliver(store.due_notifications(now_iso(), 10)[0]) == "pending"
    event = store.job_notifications(job_id)[0]
    assert "not sent" in event["last_error"] and "does not resolve" in event["last_error"]
    assert receiver.requests == []


def _failing(real, name):
    def getaddrinfo(host, *args, **kwargs):
        if host == name:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)
    return getaddrinfo


def test_shared_address_space_is_refused_at_delivery(tmp_path):
    store, dispatcher = make(tmp_path, webhook_allow_private=False)
    job_id = add_job(store, "http://100.64.1.2:9/hook")
    finish(store, job_id)
    assert dispatcher.deliver(store.due_notifications(now_iso(), 10)[0]) == "failed"
    assert "100.64.0.0/10" in store.job_notifications(job_id)[0]["last_error"]


def test_a_redirect_is_a_misconfiguration_not_a_retry(tmp_path, receiver):
    store, dispatcher = make(tmp_path)
    receiver.behaviour = "redirect"
    job_id = add_job(store, receiver.url + "/hook")
    finish(store, job_id)
    assert dispatcher.deliver(store.due_notifications(now_iso(), 10)[0]) == "failed"
    event = store.job_notifications(job_id)[0]
    assert event["attempts"] == 1 and event["next_attempt_at"] <= now_iso()
    assert "302, a redirect" in event["last_error"] and "do not follow redirects" in event["last_error"]


def test_a_trickling_receiver_is_cut_at_the_deadline(tmp_path, receiver):
    store, dispatcher = make(tmp_path, webhook_timeout=1.5)
    receiver.behaviour = "trickle"
    receiver.trickle_seconds = 0.5  # each byte well within any per-read timeout
    job_id = add_job(store, receiver.url + "/hook")
    finish(store, job_id)
    started = time.monotonic()
    assert dispatcher.deliver(store.due_notifications(now_iso(), 10)[0]) == "pending"
    assert 1.4 < time.monotonic() - started < 2.5
    assert "deadline" in store.job_notifications(job_id)[0]["last_error"]


def test_one_slow_receiver_host_holds_at_most_its_share_of_senders(tmp_path, receiver):
    store, dispatcher = make(tmp_path, webhook_timeout=3.0, webhook_host_concurrency=2)
    receiver.behaviour = "trickle"
    receiver.trickle_seconds = 1.0
    fast = Receiver()
    try:
        slow_jobs = [add_job(store, receiver.url + f"/slow{i}") for i in range(8)]
        for job_id in slow_jobs:
            finish(store, job_id)
        time.sleep(0.01)
        other = add_job(store, f"http://localhost:{fast.port}/fine", owner="b")  # another host, another user
        finish(store, other)
        dispatcher.start()
        started = time.monotonic()
        fast.wait_for(1, timeout=10)
        assert time.monotonic() - started < 1.5
        assert len(receiver.requests) <= 2  # the slow host never got more than its two senders
    finally:
        dispatcher.shutdown()
        fast.close()


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


def test_https_connects_to_the_checked_address_with_the_name_for_sni_host_and_certificate(tmp_path, monkeypatch):
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=hooks.test", "-addext", "subjectAltName=DNS:hooks.test"],
                   check=True, capture_output=True)
    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            seen["host"] = self.headers["Host"]
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: seen.__setitem__("sni", name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        _scripted_dns(monkeypatch, "hooks.test", "127.0.0.1")
        monkeypatch.setattr(certifi, "where", lambda: str(cert))  # trust the test's certificate
        status, _ = post_pinned(f"https://hooks.test:{port}/hook", b"{}", {}, timeout=5, allow_private=True)
        assert status == 204 and seen == {"sni": "hooks.test", "host": f"hooks.test:{port}"}
        # The same address under a name the certificate does not carry is refused.
        _scripted_dns(monkeypatch, "other.test", "127.0.0.1")
        with pytest.raises(ConnectionError, match="doesn't match 'hooks.test'"):
            post_pinned(f"https://other.test:{port}/hook", b"{}", {}, timeout=5, allow_private=True)
    finally:
        server.shutdown()
        server.server_close()


def test_a_name_that_resolves_slowly_is_given_up_at_the_deadline(tmp_path, receiver):
    slow_dns = lambda host, port, **kw: time.sleep(3) or _answers("127.0.0.1")  # noqa: E731
    store, _ = make(tmp_path)
    dispatcher = WebhookDispatcher(store, Settings(home=tmp_path, webhook_timeout=1.0, webhook_allow_private=True),
                                   resolver=slow_dns)
    job_id = add_job(store, f"http://slow-dns.test:{receiver.port}/hook")
    finish(store, job_id)
    started = time.monotonic()
    assert dispatcher.deliver(store.due_notifications(now_iso(), 10)[0]) == "pending"
    assert time.monotonic() - started < 1.5
    assert "did not resolve within the 1 s deadline" in store.job_notifications(job_id)[0]["last_error"]


def test_one_user_with_many_slow_receivers_holds_at_most_their_share_of_senders(tmp_path, receiver):
    # Many host names for one slow server (as a wildcard DNS entry gives): the per-host limit
    # alone would let them take every sender; the per-user one does not.
    store, dispatcher = make(tmp_path, webhook_timeout=3.0, webhook_owner_concurrency=2)
    receiver.behaviour = "trickle"
    receiver.trickle_seconds = 1.0
    fast = Receiver()
    try:
        for i in range(8):
            name = f"slow{i}.test"
            job_id = add_job(store, f"http://{name}:{receiver.port}/hook", owner="mallory")
            finish(store, job_id)
        time.sleep(0.01)
        finish(store, add_job(store, f"http://127.0.0.1:{fast.port}/fine", owner="bob"))
        dispatcher.resolver = lambda host, port, **kw: _answers("127.0.0.1")
        dispatcher.start()
        started = time.monotonic()
        fast.wait_for(1, timeout=10)
        assert time.monotonic() - started < 1.5
        assert len(receiver.requests) <= 2
    finally:
        dispatcher.shutdown()
        fast.close()
