"""The OpenAPI description names exactly the routes the app serves, and is a valid 3.1 document."""

import re

import falcon
import falcon.testing
import pytest
from openapi_spec_validator import validate

from modaclouds_batch.app import build_gateway, create_app
from modaclouds_batch.dialects import all_dialects, openapi_description
from modaclouds_batch.settings import load_settings

SPEC_FILE = "modaclouds_batch/api/openapi.json"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Error statuses whose body is not {"error": ...}: a degraded health report is still a report.
OWN_ERROR_BODIES = {("GET", "/health", "503")}


@pytest.fixture
def app(gateway):
    return create_app(gateway)


@pytest.fixture(scope="module")
def spec():
    """The description as served: the core file with every dialect's fragment merged in."""
    return openapi_description(all_dialects())


def served_routes(app: falcon.App) -> dict[tuple[str, str], str]:
    """(METHOD, template) -> resource class, for every responder (on_get, ...) in falcon's router."""
    routes = {}
    nodes = list(app._router._roots)
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children)
        if node.resource is None:
            continue
        for method in falcon.constants.COMBINED_METHODS:
            if callable(getattr(node.resource, f"on_{method.lower()}", None)):
                routes[(method, node.uri_template)] = type(node.resource).__name__
    return routes


def described_routes(spec: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item if method in HTTP_METHODS}


def test_every_served_route_is_described_and_every_described_route_is_served(app, spec):
    served = served_routes(app)
    described = described_routes(spec)
    undescribed = sorted(set(served) - described, key=lambda r: (r[1], r[0]))
    unserved = sorted(described - set(served), key=lambda r: (r[1], r[0]))
    problems = [f"served but not in {SPEC_FILE}: {method} {path} ({served[(method, path)]}.on_{method.lower()})"
                for method, path in undescribed]
    problems += [f"in {SPEC_FILE} but not served by create_app: {method} {path}" for method, path in unserved]
    assert not problems, "the API description and the app disagree:\n  " + "\n  ".join(problems)
    assert len(served) > 30  # the walk really found the router's routes


def test_path_parameters_match_the_route_templates(spec):
    problems = []
    for path, item in spec["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            params = [p for p in operation.get("parameters", []) + item.get("parameters", []) if "$ref" not in p]
            declared = {p["name"] for p in params if p["in"] == "path"}
            if declared != names:
                problems.append(f"{method.upper()} {path}: path parameters {sorted(declared)}, template has {sorted(names)}")
    assert not problems, "\n".join(problems)


def test_the_description_is_a_valid_openapi_3_1_document(spec):
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # raises OpenAPIValidationError with the place and the reason


def test_every_error_status_has_the_error_body(spec):
    responses = spec["components"]["responses"]
    for name, response in responses.items():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, name
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and (method.upper(), path, status) not in OWN_ERROR_BODIES:
                    assert "$ref" in response and response["$ref"].startswith("#/components/responses/"), \
                        f"{method.upper()} {path} {status}: point it at a components/responses error"


def test_the_webhook_payload_and_its_standard_webhooks_headers_are_described(spec):
    hook = spec["webhooks"]["jobNotification"]["post"]
    assert {p["name"] for p in hook["parameters"]} >= {"webhook-id", "webhook-timestamp", "webhook-signature"}
    payload = spec["components"]["schemas"]["JobNotification"]
    assert {"job-uuid", "retcode", "event_id", "job_status", "links"} <= set(payload["required"])


def test_openapi_json_is_served_as_kept_in_the_repository(app, spec):
    client = falcon.testing.TestClient(app)
    resp = client.simulate_get("/openapi.json")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json == spec


def test_docs_page_loads_the_description_and_assets_the_gateway_serves(app):
    client = falcon.testing.TestClient(app)
    page = client.simulate_get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'url: "/openapi.json"' in page.text
    assets = re.findall(r'(?:src|href)="(/docs/[^"]+)"', page.text)
    assert "/docs/swagger-ui-bundle.js" in assets and "/docs/swagger-ui.css" in assets
    for asset in assets:
        resp = client.simulate_get(asset)
        assert resp.status_code == 200, asset
        assert len(resp.content) > 0, asset
    assert "SwaggerUIBundle" in client.simulate_get("/docs/swagger-ui-bundle.js").text
    missing = client.simulate_get("/docs/index.html")
    assert missing.status_code == 404 and "error" in missing.json


def test_docs_and_description_need_no_token_when_tokens_are_on(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path, "auth": True}, environ={}))
    try:
        client = falcon.testing.TestClient(create_app(gw))
        for path in ("/openapi.json", "/docs", "/docs/swagger-ui.css"):
            assert client.simulate_get(path).status_code == 200, path
        assert client.simulate_get("/quota").status_code == 401
    finally:
        gw.store.close()
