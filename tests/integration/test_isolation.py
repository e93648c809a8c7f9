"""Isolation where jobs run: one user's job cannot reach another user's job files.

Two users submit through the HTTP API with their own tokens. Bob has a job queued (held,
its input spooled on the pool) and a job running (a secret in its sandbox); Alice's job
then tries everything the execute node offers: every job's folder in SPOOL and every
other sandbox under EXECUTE, on every node of the pool, to read and to write. It must
find them (so the test can fail) and be refused each time; Bob's jobs then print their
own secrets, not Alice's text. See docs/access.md, "Where jobs run".
"""

from __future__ import annotations

import io
import tarfile
import uuid

import pytest

from .fixtures import GATEWAY_ENV
from .gateway import GatewayProcess, pack
from .test_access import AuthedClient, cli_token

pytestmark = pytest.mark.integration

# Alice's job. The pool's folders are found from the job's own sandbox
# (<state>/<node>/execute/dir_N), the files by the names the gateway spools.
ATTACK = r"""#!/bin/sh
me=$_CONDOR_SCRATCH_DIR
state=$(dirname "$(dirname "$(dirname "$me")")")
echo "account $(id -un)"
for d in "$state"/*/spool/*/*/cluster*.proc*.subproc0; do
    [ -d "$d" ] || continue
    echo "spool-dir $d"
    ls "$d" >/dev/null 2>&1 && echo "LISTED $d"
    for f in input.tar.gz bundle.tar.gz arguments.sh; do
        cat "$d/$f" >/dev/null 2>&1 && echo "READ $d/$f"
        tar -xzOf "$d/$f" 2>/dev/null | sed 's/^/LEAK /'
        (printf 'alice was here\n' > "$d/$f") 2>/dev/null && echo "WROTE $d/$f"
    done
    touch "$d/planted-by-alice" 2>/dev/null && echo "WROTE $d/planted-by-alice"
done
for d in "$state"/*/execute/dir_*; do
    [ "$d" = "$me" ] && continue
    echo "sandbox $d"
    ls "$d" >/dev/null 2>&1 && echo "LISTED $d"
    cat "$d/work/secret.txt" 2>/dev/null | sed 's/^/LEAK /'
    (printf 'alice was here\n' > "$d/work/secret.txt") 2>/dev/null && echo "WROTE $d/work/secret.txt"
    touch "$d/planted-by-alice" 2>/dev/null && echo "WROTE $d/planted-by-alice"
done
# The pool's own tools, as the job's account (FS authentication on loopback).
cfg=$(ls "$state"/condor_config.* | head -n 1)
CONDOR_CONFIG=$cfg condor_q -allusers -af GatewayOwner JobBatchName 2>/dev/null | sed 's/^/LEAK queue /'
CONDOR_CONFIG=$cfg condor_hold -all >/dev/null 2>&1 && echo "WROTE queue: held every job"
# Other jobs' processes: their command lines, environments, open files.
mine=$(id -un)
for p in /proc/[0-9]*; do stat -c %U "$p" 2>/dev/null; done | sort -u | grep -vx "$mine" | sed 's/^/LEAK process of /'
echo "attack done"
"""


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def script(text: str) -> bytes:
    return pack(None, {"run.sh": text.encode()})


@pytest.fixture(scope="module")
def two_users(tmp_path_factory, condor_config):
    home = tmp_path_factory.mktemp("isolation")
    gateway = GatewayProcess(home, condor_config, env={**GATEWAY_ENV, "MODACLOUDS_BATCH_AUTH": "true"}).start()
    clients = {name: AuthedClient(gateway.url, cli_token(home, name)["token"]) for name in ("alice", "bob")}
    yield clients
    gateway.stop()


def stdout_of(client, job_id: str) -> str:
    resp = client.get(f"/jobs/{job_id}/artifacts/stdout")
    assert resp.status_code == 200, resp.text
    return resp.text


def test_alice_can_neither_read_nor_write_bobs_queued_and_running_jobs(two_users):
    alice, bob = two_users["alice"], two_users["bob"]
    queued_secret, running_secret = f"bob-queued-{uuid.uuid4().hex}", f"bob-running-{uuid.uuid4().hex}"

    # Bob's queued job: held at once, its bundle and input stay spooled until released.
    queued = bob.submit(script("#!/bin/sh\ncat secret.txt\nsleep 20\n"), name="bob-queued",
                        input_archive=tar_of({"secret.txt": queued_secret.encode() + b"\n"}))
    assert queued.status_code == 201, queued.text
    queued_id = queued.json()["job_id"]
    assert bob.post(f"/jobs/{queued_id}/hold").status_code in (200, 202)
    bob.wait_for(queued_id, "held", timeout=60)

    # Bob's running job: a secret in its sandbox, read back once Alice's job is done.
    running = bob.submit(script(f"#!/bin/sh\necho {running_secret} > secret.txt\nsleep 60\n"
                                "cat secret.txt\nls ..\n"), name="bob-running")
    assert running.status_code == 201, running.text
    running_id = running.json()["job_id"]
    bob.wait_for(running_id, "running", timeout=120)

    attack = alice.submit(script(ATTACK), name="alice-attack")
    assert attack.status_code == 201, attack.text
    attack_id = attack.json()["job_id"]
    done = alice.wait_for(attack_id, ("completed", "failed"), timeout=120)
    report = stdout_of(alice, attack_id)
    assert done["job_status"] == "completed", (done, report)

    assert "attack done" in report, report
    assert report.count("spool-dir ") >= 2, report  # Bob's two jobs' folders were there to try
    assert report.count("sandbox ") >= 1, report  # and Bob's running sandbox
    assert "LEAK queue" not in report and "LEAK process" not in report, report
    refused = [line for line in report.splitlines() if line.split(" ", 1)[0] in ("LISTED", "READ", "WROTE", "LEAK")]
    assert refused == [], report
    assert queued_secret not in report and running_secret not in report
    assert not report.splitlines()[0].endswith(" batch")  # not the Owner every job shares

    # Bob's jobs saw only their own files.
    bob.wait_for(running_id, "completed", timeout=120)
    running_out = stdout_of(bob, running_id)
    assert running_secret in running_out and "alice" not in running_out
    assert bob.post(f"/jobs/{queued_id}/release").status_code in (200, 202)
    bob.wait_for(queued_id, "completed", timeout=120)
    assert stdout_of(bob, queued_id).strip() == queued_secret


def test_nothing_a_job_leaves_in_shared_temporary_folders_reaches_the_next_job(two_users):
    alice, bob = two_users["alice"], two_users["bob"]
    marker = f"alice-{uuid.uuid4().hex}"

    left = alice.submit(script(f"#!/bin/sh\necho secret > /tmp/{marker}\necho secret > /dev/shm/{marker}\n"
                               f"echo tmpdir=$TMPDIR\n"), name="alice-leaves")
    assert left.status_code == 201, left.text
    alice.wait_for(left.json()["job_id"], "completed", timeout=120)
    assert "/scratch" in stdout_of(alice, left.json()["job_id"])  # TMPDIR is the job's own

    looks = bob.submit(script(f"#!/bin/sh\nls /tmp/{marker} /dev/shm/{marker} 2>&1\necho looked\n"),
                       name="bob-looks")
    assert looks.status_code == 201, looks.text
    bob.wait_for(looks.json()["job_id"], "completed", timeout=120)
    seen = stdout_of(bob, looks.json()["job_id"])
    assert "looked" in seen and "No such file" in seen and seen.count("No such file") == 2, seen
