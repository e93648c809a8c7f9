"""A job's archives are checked as one tree, in unpack order, also when they are data objects.

Refusals happen before HTCondor is asked anything, so no pool is needed.
"""

import gzip
import io
import tarfile

import pytest

from .apps import admin_client


@pytest.fixture
def client(gateway):
    return admin_client(gateway)


def targz(*members) -> bytes:
    """A .tar.gz of (name, kind, linkname-or-data) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            data = extra if kind == tarfile.REGTYPE else b""
            info.linkname = extra if kind == tarfile.SYMTYPE else ""
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data) if data else None)
    return gzip.compress(buf.getvalue())


BUNDLE_WITH_LINK = targz(("run.sh", tarfile.REGTYPE, b"#!/bin/sh\ncat d/passwd\n"), ("sub", tarfile.DIRTYPE, b""),
                         ("d", tarfile.SYMTYPE, "sub"))
INPUT_THROUGH_LINK = targz(("d/passwd", tarfile.REGTYPE, b"root::0:0::/:/bin/sh\n"))


def multipart(**files):
    boundary = "b0undary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.tar.gz"\r\n'
        f"Content-Type: application/gzip\r\n\r\n".encode() + data + b"\r\n" for name, data in files.items())
    return {"body": body + f"--{boundary}--\r\n".encode(),
            "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


def test_an_input_below_a_link_of_the_bundle_is_refused(client, gateway):
    resp = client.simulate_post("/jobs", **multipart(**{"job-bundle": BUNDLE_WITH_LINK, "job-input": INPUT_THROUGH_LINK}))
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == "job-input"
    assert "'d/passwd' lies below 'd', which is a symlink (from job-bundle)" in resp.json["error"]
    assert gateway.store.count_jobs() == 0


def _upload(client, data: bytes) -> dict:
    resp = client.simulate_post("/data", body=data, params={"filename": "a.tar.gz"})
    assert resp.status_code == 201, resp.text
    return resp.json


def test_data_objects_known_valid_alone_are_still_checked_together(client, gateway):
    bundle, dataset = _upload(client, BUNDLE_WITH_LINK), _upload(client, INPUT_THROUGH_LINK)
    # As earlier jobs would have left them: each checked and found valid on its own.
    gateway.service.data.note_archive_check(bundle["id"], bundle["sha256"], "bundle", links=True)
    gateway.service.data.note_archive_check(dataset["id"], dataset["sha256"], "archive", links=False)
    resp = client.simulate_post("/jobs", json={"bundle_id": bundle["id"], "input_ids": [dataset["id"]]})
    assert resp.status_code == 400, resp.text
    assert resp.json["field"] == "job-input" and "lies below 'd'" in resp.json["error"]


def test_checks_written_before_links_were_counted_are_not_trusted(client, gateway):
    bundle, dataset = _upload(client, BUNDLE_WITH_LINK), _upload(client, INPUT_THROUGH_LINK)
    for row, verdict in ((bundle, "bundle"), (dataset, "archive")):  # the old form, without the links flag
        gateway.store.update_data(row["id"], {"archive_check": f"{verdict}:{row['sha256']}"},
                                  expected_sha256=row["sha256"])
    resp = client.simulate_post("/jobs", json={"bundle_id": bundle["id"], "input_ids": [dataset["id"]]})
    assert resp.status_code == 400 and "lies below 'd'" in resp.json["error"]
