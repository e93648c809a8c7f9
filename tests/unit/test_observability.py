import io
import json
import logging
import uuid

import falcon.testing

from modaclouds_batch.app import build_gateway, create_app
from modaclouds_batch.observability import configure_logging
from modaclouds_batch.settings import load_settings
from modaclouds_batch.store import JobChange
from modaclouds_batch.timefmt import now_iso

from .apps import admin_client


def test_metrics_expose_requests_transitions_and_jobs_by_state(gateway):
    client = admin_client(gateway)
    job_id = str(uuid.uuid4())
    now = now_iso()
    gateway.store.insert_job({"id": job_id, "name": "j", "owner": "anonymous", "state": "idle",
                              "arguments": "[]", "created_at": now, "updated_at": now})
    gateway.store.apply_job_changes([JobChange(job_id, {}, "running", None)])
    client.simulate_get(f"/jobs/{job_id}")
    text = client.simulate_get("/metrics").text
    assert 'gateway_job_state_transitions_total{state="running"} 1.0' in text
    assert 'gateway_jobs{state="running"} 1.0' in text
    assert 'gateway_http_request_seconds_count{method="GET",route="/jobs/{job_id}",status="200"} 1.0' in text


def test_metrics_are_admin_only_when_tokens_are_on(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "auth": True}, environ={}))
    client = falcon.testing.TestClient(create_app(gw))
    assert client.simulate_get("/metrics").status_code == 401
    token = gw.tokens.create("alice")[0]
    assert client.simulate_get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 403


def test_log_lines_are_json_with_the_request_id(gateway, capsys):
    configure_logging("json")
    stream = io.StringIO()
    logging.getLogger().handlers[0].stream = stream
    client = admin_client(gateway)
    client.simulate_get(f"/jobs/{uuid.uuid4()}", headers={"X-Request-Id": "req-123"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "modaclouds_batch.access"]
    assert access and access[-1]["request_id"] == "req-123"
    assert access[-1]["status"] == 404 and access[-1]["route"] == "/jobs/{job_id}"
