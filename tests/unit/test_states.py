import pytest

from modaclouds_batch.jobs.ad_changes import state_from_ad
from modaclouds_batch.jobs.states import JobAction, JobState, action_conflict


@pytest.mark.parametrize(
    "ad, expected",
    [
        ({"JobStatus": 1}, JobState.IDLE),
        ({"JobStatus": 2}, JobState.RUNNING),
        ({"JobStatus": 6}, JobState.RUNNING),
        ({"JobStatus": 7}, JobState.SUSPENDED),
        ({"JobStatus": 5, "HoldReasonCode": 1}, JobState.HELD),
        ({"JobStatus": 5, "HoldReasonCode": 16}, JobState.IDLE),
        ({"JobStatus": 3}, JobState.REMOVED),
        ({"JobStatus": 4, "ExitCode": 0, "ExitBySignal": False}, JobState.COMPLETED),
        ({"JobStatus": 4, "ExitCode": 3, "ExitBySignal": False}, JobState.FAILED),
        ({"JobStatus": 4, "ExitBySignal": True, "ExitSignal": 9}, JobState.FAILED),
    ],
)
def test_condor_status_maps_to_one_gateway_state(ad, expected):
    assert state_from_ad(ad) is expected


def test_unknown_condor_status_is_an_error_not_a_guess():
    with pytest.raises(ValueError):
        state_from_ad({"JobStatus": 42})


def test_release_of_a_running_job_is_a_conflict_that_says_why():
    message = action_conflict(JobAction.RELEASE, JobState.RUNNING)
    assert "cannot release a job that is running" in message
    assert "held" in message


def test_actions_on_finished_jobs_conflict():
    for action in JobAction:
        assert "already completed" in action_conflict(action, JobState.COMPLETED)


def test_sensible_transitions_are_allowed():
    assert action_conflict(JobAction.SUSPEND, JobState.RUNNING) is None
    assert action_conflict(JobAction.CONTINUE, JobState.SUSPENDED) is None
    assert action_conflict(JobAction.RELEASE, JobState.HELD) is None
    assert action_conflict(JobAction.REMOVE, JobState.IDLE) is None


@pytest.mark.parametrize("ad, expected", [
    ({"JobStatus": 2, "JobCurrentStartDate": 100}, "Transferring Input"),
    ({"JobStatus": 2, "JobCurrentStartDate": 100, "JobCurrentStartExecutingDate": 100}, "Running"),
    ({"JobStatus": 2, "JobCurrentStartDate": 200, "JobCurrentStartExecutingDate": 100}, "Transferring Input"),
    ({"JobStatus": 2, "JobCurrentStartDate": 100, "TransferringInput": True}, "Transferring Input"),
    ({"JobStatus": 2, "JobCurrentStartDate": 200, "JobCurrentStartExecutingDate": 100, "TransferringInput": False},
     "Running"),
    ({"JobStatus": 2}, "Running"),
    ({"JobStatus": 1}, "Idle"),
    ({"JobStatus": 6, "JobCurrentStartDate": 100}, "Transferring Output"),
])
def test_backend_status_names_a_running_job_still_fetching_input(ad, expected):
    from modaclouds_batch.jobs.ad_changes import backend_status

    assert backend_status(ad) == expected
    assert state_from_ad(ad).value in ("running", "idle")
