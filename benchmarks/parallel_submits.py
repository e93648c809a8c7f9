"""Do concurrent spooled submits work, and go faster, from threads with their own htcondor2.Schedd?

Issue 20 asks what in htcondor2 really needs serialising. This submits the benchmark's job
(never matching a worker) from 1 thread, then from 4 threads each with its own Schedd
object, 4 threads sharing one Schedd behind a lock (what CondorClient does), and 4 sharing
one without a lock, in 3 interleaved rounds, and removes every job at the end.

    python benchmarks/parallel_submits.py CONDOR_CONFIG [JOBS_PER_THREAD]
"""
import json
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import htcondor2  # noqa: E402

import benchmarks.bench as b  # noqa: E402
from modaclouds_batch.condor import submit_description as sd  # noqa: E402

cc = Path(sys.argv[1]); per = int(sys.argv[2]) if len(sys.argv) > 2 else 25
pool = b.Pool.connect(cc)
instance = pool.track(f"bench-parallel-{uuid.uuid4()}")
work = Path(tempfile.mkdtemp(prefix="modaclouds-bench-par-"))
job_dir = b.job_folder(work / "job", b.pack_bundle("hello"))
ad = b.locate_schedd()

def worker(n, own, lock=None):
    schedd = htcondor2.Schedd(ad) if own else pool.schedd
    descs = [sd.render_submit(b.raw_spec(instance, job_dir)) for _ in range(n)]
    errors = 0
    for d in descs:
        try:
            if lock:
                with lock:
                    r = schedd.submit(d, count=1, spool=True); schedd.spool(r)
            else:
                r = schedd.submit(d, count=1, spool=True); schedd.spool(r)
        except Exception as exc:
            errors += 1; print("error:", exc, file=sys.stderr)
    return errors

def run(threads, own, lock=None):
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        errs = sum(ex.map(lambda _: worker(per, own, lock), range(threads)))
    secs = time.perf_counter() - start
    return {"threads": threads, "own_schedd": own, "locked": bool(lock), "jobs": threads * per,
            "per_second": round(threads * per / secs, 1), "errors": errs}

results = []
try:
    worker(3, True)
    for r in range(3):
        results.append(run(1, True))
        results.append(run(4, True))
        results.append(run(4, False, threading.Lock()))
        results.append(run(4, False))
    for x in results: print(json.dumps(x))
finally:
    print("removed", pool.remove_all())
    import shutil
    shutil.rmtree(work, ignore_errors=True)
