"""Scenarios every condor client must pass alike: the real CondorClient on the real pool
(tests/integration/test_condor_contract.py) and tests/unit/fakes.py's FakeCondor
(tests/unit/test_condor_contract.py). What the unit tests believe of the schedd is what
these scenarios check of both, so the fake cannot drift from the client unnoticed.

Each job is submitted gated (GatewayWaiting, as a job waiting for its dependencies is), so
it never matches a worker: what it does is only what the scenario does to it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable

from modaclouds_batch.condor import submit_description as sd
from modaclouds_batch.condor.job_ad import CondorAction, JobAd, JobStatus
from modaclouds_batch.jobs import bundles
from tests.polling import until

INSTANCE = "contract-" + uuid.uuid4().hex[:8]
DEADLINE = 90.0  # seconds a condition may take on a loaded real pool


def wait_for(what: str, condition: Callable[[], object]) -> object:
    """The condition's first truthy value; fails with ``what`` after a generous deadline."""
    return until(condition, DEADLINE, what)


def gated_job(folder: Path) -> tuple[str, object]:
    """A job folder (bundle and arguments) and its description, waiting behind a closed gate."""
    job_id = str(uuid.uuid4())
    job_dir = folder / job_id
    job_dir.mkdir(parents=True)
    bundles.write_script_bundle("#!/bin/sh\necho never runs\n", job_dir / sd.BUNDLE_FILE)
    (job_dir / sd.ARGUMENTS_FILE).write_text(sd.arguments_script([]))
    spec = sd.JobSpec(job_id=job_id, instance_id=INSTANCE, owner="contract", name="contract", job_dir=job_dir,
                      request_memory_mb=16, request_disk_kb=1024, waiting=True)
    return job_id, sd.render_submit(spec)


def the_ad(client, job_id: str) -> JobAd | None:
    ads = client.query(sd.jobs_constraint(INSTANCE, [job_id]), sd.JOB_PROJECTION)
    assert all(isinstance(ad, JobAd) for ad in ads), ads
    return ads[0] if ads else None


def settled(client, job_id: str) -> JobAd:
    """The job's ad once the schedd no longer holds it for its spooled input."""
    return wait_for("the spooling hold ends", lambda: (lambda ad: ad if ad and not ad.spooling_input else None)(
        the_ad(client, job_id)))


def scenario_submit_spooled_then_query(client, folder: Path) -> None:
    job_id, description = gated_job(folder)
    cluster, first_proc = client.submit_spooled(description)
    ad = settled(client, job_id)
    assert ad.gateway_job_id == job_id
    assert (ad.cluster_id, ad.proc_id) == (cluster, first_proc)
    assert ad.status is JobStatus.IDLE and ad.gated
    client.act(CondorAction.REMOVE, sd.jobs_constraint(INSTANCE, [job_id]), "contract test done")


def scenario_hold_release_edit_remove_history(client, folder: Path) -> None:
    job_id, description = gated_job(folder)
    client.submit_spooled(description)
    settled(client, job_id)
    only = sd.jobs_constraint(INSTANCE, [job_id])

    assert client.act(CondorAction.HOLD, only, "contract hold")["TotalSuccess"] == 1
    held = wait_for("held", lambda: (lambda ad: ad if ad and ad.status is JobStatus.HELD else None)(
        the_ad(client, job_id)))
    assert held.hold_reason_code == 1  # held by a user action
    assert held.hold_reason.startswith("contract hold")  # the schedd adds " (by user ...)"
    assert not held.spooling_input

    assert client.act(CondorAction.RELEASE, only, "contract release")["TotalSuccess"] == 1
    wait_for("idle again", lambda: (lambda ad: ad and ad.status is JobStatus.IDLE)(the_ad(client, job_id)))

    assert client.act(CondorAction.HOLD, only, "contract hold again")["TotalSuccess"] == 1
    wait_for("held again", lambda: (lambda ad: ad and ad.status is JobStatus.HELD)(the_ad(client, job_id)))
    client.edit(only, sd.GATEWAY_WAITING, False)
    opened = the_ad(client, job_id)
    assert not opened.gated and opened.status is JobStatus.HELD

    # Only the named status matches a status constraint.
    assert client.query(sd.jobs_constraint(INSTANCE, [job_id], status=JobStatus.COMPLETED), sd.JOB_PROJECTION) == []

    assert client.act(CondorAction.REMOVE, only, "contract remove")["TotalSuccess"] == 1
    wait_for("gone from the queue", lambda: (lambda ad: ad is None or ad.status is JobStatus.REMOVED)(
        the_ad(client, job_id)))
    gone = wait_for("in the history", lambda: client.history(only, sd.JOB_PROJECTION, 1))
    assert all(isinstance(ad, JobAd) for ad in gone)
    assert gone[0].gateway_job_id == job_id and gone[0].status is JobStatus.REMOVED


def scenario_an_action_on_no_job_succeeds_on_none(client, folder: Path) -> None:
    nobody = sd.jobs_constraint(INSTANCE, [str(uuid.uuid4())])
    assert client.act(CondorAction.HOLD, nobody, "no such job").get("TotalSuccess", 0) == 0
    assert client.query(nobody, sd.JOB_PROJECTION) == []


def scenario_a_cluster_constraint_names_one_cluster_only(client, folder: Path) -> None:
    first_id, first = gated_job(folder)
    second_id, second = gated_job(folder)
    cluster, _ = client.submit_spooled(first)
    client.submit_spooled(second)
    settled(client, first_id)
    settled(client, second_id)
    client.remove_quietly(sd.cluster_constraint(cluster), "contract: one cluster")
    wait_for("the named cluster leaves", lambda: (lambda ad: ad is None or ad.status is JobStatus.REMOVED)(
        the_ad(client, first_id)))
    assert the_ad(client, second_id).status is JobStatus.IDLE
    client.act(CondorAction.REMOVE, sd.jobs_constraint(INSTANCE, [second_id]), "contract test done")


SCENARIOS = [scenario_submit_spooled_then_query, scenario_a_cluster_constraint_names_one_cluster_only, scenario_hold_release_edit_remove_history,
             scenario_an_action_on_no_job_succeeds_on_none]
