import pytest

from modaclouds_batch.app import build_gateway
from modaclouds_batch.settings import load_settings

from .apps import admin_client


@pytest.fixture
def client(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path}, environ={}))
    yield admin_client(gw)
    gw.store.close()


@pytest.mark.parametrize("body, field", [
    ({"owner": "alice", "expires_in": 60, "expires_at": "2024-01-01T12:99:00Z"}, "expires_at"),
    ({"owner": "alice", "expires_at": "2024-01-01T12:99:00Z"}, "expires_at"),
    ({"owner": "alice", "colour": "blue"}, "colour"),
    ({"owner": "Not A Name"}, "owner"),
])
def test_malformed_token_requests_are_400_naming_the_field(client, body, field):
    resp = client.simulate_post("/tokens", json=body)
    assert resp.status_code == 400 and resp.json["field"] == field


def test_a_valid_token_request_returns_the_token_once(client):
    resp = client.simulate_post("/tokens", json={"owner": "alice", "expires_in": 60, "label": "ci"})
    assert resp.status_code == 201 and resp.json["token"].startswith("mcb_")
    listed = client.simulate_get("/tokens").json
    assert "token" not in listed[0] and "token_hash" not in listed[0]
