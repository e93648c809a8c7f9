"""The browsable docs in a real browser (Debian's headless chromium), with no internet.

A newcomer opens /docs, reads every route, and submits a bundle from the page.
MODACLOUDS_BATCH_UPDATE_SCREENSHOTS=1 also writes the screenshots into docs/images/.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from modaclouds_batch.dialects import all_dialects, openapi_description

from . import browser
from .gateway import REPO, pack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(browser.chromium() is None,
                       reason="Debian's chromium is not installed (apt-get install -y chromium): "
                              "the browser test of /docs needs it"),
]

SPEC = openapi_description(all_dialects())
SUBMIT = "#operations-jobs-submitJob"


def keep_screenshot(shot, name: str) -> None:
    assert shot.read_bytes().startswith(b"\x89PNG"), f"{shot} is not a PNG"
    if os.environ.get("MODACLOUDS_BATCH_UPDATE_SCREENSHOTS"):
        (REPO / "docs" / "images").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "images" / name)


def test_docs_page_lists_every_route_with_no_network(gateway, tmp_path):
    dom = browser.dump_dom(f"{gateway.url}/docs", tmp_path / "profile")

    shown = set(re.findall(r'data-path="([^"]+)"', dom))
    assert "/jobs/{job_id}/artifacts/{name}" in shown
    assert set(SPEC["paths"]) <= shown, f"described but not shown: {set(SPEC['paths']) - shown}"
    assert "jobNotification" in shown  # the webhooks section
    assert "OAS 3.1" in dom and "Submit a job" in dom

    shot = tmp_path / "api-docs.png"
    browser.screenshot(f"{gateway.url}/docs", shot, tmp_path / "profile-shot")
    keep_screenshot(shot, "api-docs.png")


def test_a_bundle_submitted_from_the_docs_page_runs(gateway, client, tmp_path):
    bundle = tmp_path / "hello.tar.gz"
    bundle.write_bytes(pack(None, {"run.sh": b"#!/bin/sh\necho hello from the docs page\n"}))
    page = browser.DevToolsSession(tmp_path / "profile")
    try:
        page.navigate(f"{gateway.url}/docs#/jobs/submitJob")  # deep link: the operation opens
        page.wait_for(f"!!document.querySelector('{SUBMIT} .try-out__btn')")
        # What "Authorize" does with the local admin token pasted in (the page sends it as Bearer).
        page.js(f"window.ui.preauthorizeApiKey('bearerAuth', {json.dumps(gateway.admin_token)})")
        page.click(f"{SUBMIT} .try-out__btn")
        page.wait_for(f"!!document.querySelector('{SUBMIT} input[type=file]')")
        page.choose_file(f"{SUBMIT} tr[data-property-name='job-bundle'] input[type=file]", bundle)
        page.click(f"{SUBMIT} .execute")
        status = page.wait_for(
            f"document.querySelector('{SUBMIT} .live-responses-table .response .response-col_status')?.textContent",
            timeout=60)
        body = page.js(f"document.querySelector('{SUBMIT} .live-responses-table .response-col_description pre')"
                       ".textContent")
        page.js(f"document.querySelector('{SUBMIT} .responses-inner').scrollIntoView()")
        page.screenshot(tmp_path / "api-docs-submit.png")
    finally:
        page.close()
    keep_screenshot(tmp_path / "api-docs-submit.png", "api-docs-submit.png")

    assert status.strip() == "201", body
    job = client.wait_for(json.loads(body)["job_id"], {"completed", "failed"})
    assert job["job_status"] == "completed", job
    assert client.get(f"/jobs/{job['id']}/artifacts/stdout").text == "hello from the docs page\n"
