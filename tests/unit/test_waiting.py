"""Why an idle job waits: one reason per job from its ad and the workers of one query."""

from modaclouds_batch.jobs.waiting import wait_reasons

BIG = {"cpus": 8, "memory_mb": 16000, "disk_mb": 100000}


def worker(name="w1", draining=False, runtimes=("bash", "python3"), free_cpus=8, free_mb=16000, largest=BIG):
    return {"name": name, "draining": draining, "runtimes": list(runtimes), "cpus_free": free_cpus,
            "memory_free_mb": free_mb, "largest_slot": largest}


def ad(job_id="j1", cpus=1, memory=128, qdate=1, **extra):
    return {"GatewayJobId": job_id, "JobStatus": 1, "RequestCpus": cpus, "RequestMemory": memory,
            "RequestDisk": 1024 * 1024, "QDate": qdate, **extra}


def test_spooling_input_comes_first():
    spooling = ad(JobStatus=5, HoldReasonCode=16)
    assert "spooled" in wait_reasons([(spooling, None)], [worker(draining=True)])["j1"]


def test_every_worker_draining_is_said_with_the_way_out():
    reason = wait_reasons([(ad(), None)], [worker(draining=True), worker("w2", draining=True)])["j1"]
    assert "every worker is draining" in reason and "undrain" in reason


def test_no_worker_at_all():
    assert "no worker is in the pool" in wait_reasons([(ad(), None)], [])["j1"]


def test_a_runtime_only_a_draining_worker_offers():
    workers = [worker(), worker("w2", draining=True, runtimes=("julia",))]
    reason = wait_reasons([(ad(), "julia")], workers)["j1"]
    assert "offers runtime 'julia'" in reason and "bash, python3" in reason


def test_too_large_for_every_worker():
    reason = wait_reasons([(ad(cpus=16), None)], [worker()])["j1"]
    assert "no worker is large enough for 16 CPUs" in reason


def test_busy_slots_count_the_jobs_ahead_on_the_same_workers():
    busy = worker(free_cpus=0, free_mb=0)
    reasons = wait_reasons([(ad("late", qdate=3), None), (ad("first", qdate=1), None), (ad("second", qdate=2), None)],
                           [busy])
    assert reasons["first"] == "all matching slots are busy"
    assert reasons["second"].endswith("1 of this gateway's jobs that fit the same workers are queued ahead of it")
    assert "2 of this gateway's jobs" in reasons["late"]


def test_free_room_means_the_negotiator_has_not_matched_it_yet():
    assert "negotiator" in wait_reasons([(ad(), "bash")], [worker()])["j1"]
