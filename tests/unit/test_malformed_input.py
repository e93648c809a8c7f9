"""Malformed input the spec fuzzer found: each is a 400 naming the field, never a 500."""

import pytest

from modaclouds_batch.errors import Unauthorized

from .apps import admin_client


@pytest.fixture
def client(gateway):
    return admin_client(gateway)


@pytest.mark.parametrize("body, field", [
    ({"owner": "alice", "expires_at": 5}, "expires_at"),
    ({"owner": "alice", "expires_at": "9999-12-31T23:00:00-05:00"}, "expires_at"),
    ({"owner": "alice", "expires_in": 1e300}, "expires_in"),
    ({"owner": "alice", "expires_in": True}, "expires_in"),
    ({"owner": "alice", "label": ["a"]}, "label"),
])
def test_token_requests_with_bad_fields_are_refused(client, body, field):
    resp = client.simulate_post("/tokens", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == field


def test_an_early_expiry_is_stored_as_iso_8601_and_the_token_is_expired(client, gateway):
    resp = client.simulate_post("/tokens", json={"owner": "alice", "expires_at": "0576-05-06T04:51:50Z"})
    assert resp.status_code == 201
    assert resp.json["expires_at"] == "0576-05-06T04:51:50.000000Z"
    with pytest.raises(Unauthorized, match="expired"):
        gateway.tokens.authenticate(resp.json["token"])


def test_a_limit_too_large_to_store_is_refused(client):
    resp = client.simulate_put("/users/alice/limits", json={"max_upload_bytes": 87975339815100907520})
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == "max_upload_bytes"


@pytest.mark.parametrize("query", ["status=idle,running", "status=idle&status=running"])
def test_the_status_filter_takes_a_comma_separated_list_or_repeats(client, query):
    resp = client.simulate_get("/jobs", query_string=query)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-total-count"] == "0"


def test_an_unknown_status_is_named(client):
    resp = client.simulate_get("/jobs", query_string="status=idle,sleeping")
    assert resp.status_code == 400
    assert "sleeping" in resp.json["error"] and resp.json["field"] == "status"


@pytest.mark.parametrize("kwargs", [
    {"params": {"ttl": "645103766801"}, "body": b"data"},
    {"body": b"--b\r\nContent-Disposition: form-data; name=\"ttl\"\r\n\r\n645103766801\r\n"
             b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\ndata\r\n--b--\r\n",
     "headers": {"Content-Type": "multipart/form-data; boundary=b"}},
])
def test_a_data_ttl_past_the_calendar_is_refused(client, kwargs):
    resp = client.simulate_post("/data", **kwargs)
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == "ttl"


def test_a_job_ttl_past_the_calendar_is_refused_before_anything_is_queued(client, gateway):
    resp = client.simulate_post("/jobs", body="job-bundle=echo+hi&job-ttl=645103766801",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == "ttl"
    assert gateway.store.count_jobs() == 0


def test_a_data_offset_too_large_to_query_is_refused(client):
    resp = client.simulate_get("/data", query_string="offset=10000000000000000001")
    assert resp.status_code == 400, resp.text


def test_a_provider_that_is_not_a_name_is_refused(client):
    resp = client.simulate_post("/workers", json={"provider": [""], "params": {}})
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == "provider"


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("body, field", [
    (b'{"command": "true", "ttl": Infinity}', "ttl"),
    (b'{"command": "true", "ttl": -Infinity}', "ttl"),
    (b'{"command": "true", "ttl": NaN}', "ttl"),
    (b'{"command": "true", "ttl": 1e400}', "ttl"),
    (b'{"command": "true", "count": Infinity}', "count"),
    (b'{"command": "true", "count": 1e400}', "count"),
    (b'{"command": "true", "arguments": ' + DEEP + b'}', "arguments"),
    (b'{"command": "true", "name": "a\\ud800b"}', "name"),
    (b'{"command": "echo \\udfff"}', "command"),
    (b'{"command": "true", "arguments": ["ok", "\\udc00"]}', "arguments"),
    (b'{"command": "true", "arguments": "\\udc00"}', "arguments"),
    (b'{"command": "true", "array": [["a", "\\ud800"]]}', "array"),
    (b'{"command": "true", "notification": "http://example.com/\\ud800"}', "notification"),
    (b'{"command": "true", "\\ud800": 1}', "\\ud800"),
    (b'{"command": "true", "arguments": ["a\\u0000b"]}', "job-arguments"),
    (b'{"command": "true", "array": [["a\\u0000b"]]}', "job-array"),
    (b'{"command": "true", "array": ["a\\u0000b"]}', "job-array"),
    (b'{"command": "true", "notification": "http://example.com:99999/"}', "job-notification"),
    (b'{"command": "true", "notification": "http://[::1/"}', "job-notification"),
    (b'{"command": "true", "notification": "http://example.com/a b"}', "job-notification"),
    (b'{"command": "true", "notification": "http://example.com:0/"}', "job-notification"),
])
def test_hostile_json_in_a_submission_is_a_400_naming_the_field(client, gateway, body, field):
    resp = client.simulate_post("/jobs", body=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == field
    assert gateway.store.count_jobs() == 0


def test_a_body_nested_100000_deep_is_a_400_on_every_json_route(client):
    resp = client.simulate_post("/tokens", body=DEEP, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert "nests deeper" in resp.json["error"]


@pytest.mark.parametrize("route, body, field", [
    ("/tokens", b'{"owner": "alice", "label": "\\ud800"}', "label"),
    ("/users/alice/limits", b'{"max_active_jobs": Infinity}', "max_active_jobs"),
    ("/workers", b'{"provider": "local", "params": {"a": {"b": "\\udfff"}}}', "params"),
])
def test_surrogates_and_infinities_are_refused_on_other_json_routes_too(client, route, body, field):
    method = client.simulate_put if route.startswith("/users") else client.simulate_post
    resp = method(route, body=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == field


@pytest.mark.parametrize("body", [b'{"how": []}', b'{"how": ["quick"]}', b'{"how": {}}', b'{"how": 1}'])
def test_a_drain_how_that_is_not_a_string_is_a_400_before_the_pool_is_asked(client, body):
    resp = client.simulate_post("/workers/localhost/drain", body=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == "how"


@pytest.mark.parametrize("body, field", [
    (b"job-bundle=echo+hi&job-notification=http://[::1/", "job-notification"),
    (b"job-bundle=echo+hi&job-notification=http://example.com:99999/", "job-notification"),
    (b"job-bundle=echo+hi&job-ttl=1e400", "ttl"),
    (b"job-bundle=echo+hi&job-count=1e400", "job-count"),
])
def test_hostile_form_fields_are_a_400_naming_the_field(client, body, field):
    resp = client.simulate_post("/jobs", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == field
