"""Resource requests and wall-time limits: parsing, rendering, and refusing the impossible."""

import pytest

from modaclouds_batch.condor import submit_description as sd
from modaclouds_batch.errors import InvalidRequest
from modaclouds_batch.jobs import resources
from modaclouds_batch.jobs.ad_changes import state_reason
from modaclouds_batch.jobs.states import JobState


@pytest.mark.parametrize("text, mb", [("512MB", 512), ("8GB", 8192), ("8G", 8192), ("1.5GB", 1536),
                                      ("2048", 2048), (4096, 4096), ("1TiB", 1024 * 1024), ("100k", 1),
                                      (" 2 gb ", 2048)])
def test_sizes_take_the_units_people_type(text, mb):
    assert resources.parse_size_mb(text, "job-memory", 128) == mb


@pytest.mark.parametrize("bad", ["lots", "8 GBytes", "-1", "0", "1e400", "inf", True, "8XB", "9999999TB"])
def test_bad_sizes_are_refused_naming_the_field(bad):
    with pytest.raises(InvalidRequest) as caught:
        resources.parse_size_mb(bad, "job-memory", 128)
    assert caught.value.details["field"] == "job-memory"


@pytest.mark.parametrize("text, seconds", [("3600", 3600), (90, 90), ("1h30m", 5400), ("90m", 5400),
                                           ("45s", 45), ("2d", 172800), ("1h 5s", 3605)])
def test_durations_take_seconds_or_1h30m(text, seconds):
    assert resources.parse_duration(text, "job-time-limit") == seconds


@pytest.mark.parametrize("bad", ["soon", "1.5h", "h", "0", "-5", "400d", True, "1h30"])
def test_bad_durations_are_refused(bad):
    with pytest.raises(InvalidRequest):
        resources.parse_duration(bad, "job-time-limit")


@pytest.mark.parametrize("bad", ["0", "two", "1.5", -1, True, "5000"])
def test_bad_cpus_are_refused(bad):
    with pytest.raises(InvalidRequest):
        resources.parse_cpus(bad)


def test_nothing_asked_gives_the_documented_defaults():
    wanted = resources.resources_from(None, None, "", None)
    assert wanted == resources.Resources(cpus=1, memory_mb=128, disk_mb=1024, time_limit=None)


def test_a_request_fits_when_one_worker_can_give_all_of_it():
    offers = [{"cpus": 8, "memory_mb": 1000, "disk_mb": 5000}, {"cpus": 2, "memory_mb": 16000, "disk_mb": 5000}]
    assert resources.unsatisfiable_reason(resources.Resources(cpus=2, memory_mb=16000), offers) is None
    # 8 CPUs and 16 GB exist, but never on one worker
    message, field, largest = resources.unsatisfiable_reason(resources.Resources(cpus=8, memory_mb=16000), offers)
    assert largest == {"cpus": 8, "memory_mb": 16000, "disk_mb": 5000}
    assert "one worker" in message and field == "job-cpus"
    message, field, _ = resources.unsatisfiable_reason(resources.Resources(memory_mb=64000), offers)
    assert field == "job-memory" and "memory 64000 MB" in message and "job-resources-wait" in message


def test_requests_and_the_time_limit_are_rendered_for_htcondor(tmp_path):
    spec = sd.JobSpec(job_id="j", instance_id="i", owner="alice", name="n", job_dir=tmp_path,
                      request_cpus=2, request_memory_mb=8192, request_disk_kb=2048 * 1024, time_limit=90)
    submit = sd.render_submit(spec)
    assert submit["request_cpus"] == "2"
    assert submit["request_memory"] == "8192MB"
    assert submit["request_disk"] == f"{2048 * 1024}KB"
    assert submit["My.GatewayTimeLimit"] == "90"
    assert submit["environment"] == "MODACLOUDS_BATCH_TIME_LIMIT=90"
    assert int(submit["allowed_job_duration"]) > 90
    plain = sd.render_submit(sd.JobSpec(job_id="j", instance_id="i", owner="a", name="n", job_dir=tmp_path))
    assert "allowed_job_duration" not in dict(plain.items())


def test_a_job_stopped_at_its_limit_says_so():
    ad = {"JobStatus": 4, "ExitCode": 124, "ExitBySignal": False, "GatewayTimeLimit": 60, "RemoteWallClockTime": 61.0}
    assert state_reason(JobState.FAILED, ad).startswith("exceeded its time limit of 60 s")
    # the same status from a job that ended early is the job's own
    assert state_reason(JobState.FAILED, {**ad, "RemoteWallClockTime": 5.0}) == "run.sh exited with status 124"
    assert state_reason(JobState.FAILED, {**ad, "GatewayTimeLimit": None}) == "run.sh exited with status 124"
