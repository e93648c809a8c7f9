"""Speed figures of the gateway, each beside the raw htcondor2 bindings measured in the same run.

Not a test: nothing here passes or fails on a number. Run it on a pool brought up by
`modaclouds-batch pool up` (``make bench`` does both); see docs/benchmarks.md.

    python benchmarks/bench.py [--json] [--submits 100] [--clients 4] [--jobs-in-store 10000] ...

Three figures:

1. submissions/s through ``POST /jobs`` (one client, N concurrent clients, one client while
   1,000 of the gateway's jobs are queued, one array) against raw spooled submits
   (``schedd.submit(spool=True)`` + ``schedd.spool``) of the same job, and a raw cluster;
2. ``GET /jobs/{id}`` and ``GET /jobs`` latency with many jobs in the store, against a raw
   ``schedd.query`` of one job by constraint;
3. schedd round trips and duration of one real ``Tracker.run_cycle()`` at 10 and 1,000 jobs;
4. the delay from the schedd recording a job's completion (``CompletionDate``) to its
   webhook arriving at a receiver, over jobs that really run (median and p95);
5. the live-output delay: a running job prints a timestamped line every half second, and
   each line's arrival through ``GET .../artifacts/stdout`` with ``Range`` (what ``logs -f``
   does) is set beside its arrival in the schedd's spool file, read directly (HTCondor's
   own streaming: the floor).

Except in 4 and 5, every job the benchmark queues asks for a runtime no worker offers, so none
ever runs: the figures measure the gateway and the schedd, not jobs competing with them
for the 2 cores.
All of them are removed at the end, and the temporary gateway homes deleted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import classad2  # noqa: E402
import htcondor2  # noqa: E402
import requests  # noqa: E402

from modaclouds_batch.app import build_gateway  # noqa: E402
from modaclouds_batch.condor import submit_description as sd  # noqa: E402
from modaclouds_batch.condor.schedd import configure, locate_schedd  # noqa: E402
from modaclouds_batch.jobs.tracker import CHANGE_MARGIN  # noqa: E402
from modaclouds_batch.settings import Settings, load_settings  # noqa: E402
from modaclouds_batch.store import Store  # noqa: E402
from modaclouds_batch.timefmt import to_iso  # noqa: E402
from tests.integration.gateway import GatewayProcess, pack, pack_bundle  # noqa: E402
from tests.receiver import Receiver  # noqa: E402

# A runtime no worker offers: the job matches no slot and stays idle (see the module doc).
NEVER_RUNTIME = "bench-never-matches"
# The user a loopback gateway without tokens acts as (access.identity.LOCAL_ACTOR).
OWNER = "anonymous"
# The bench's own gateways: production tracker interval, and limits that never refuse it. Tokens
# off, explicitly (loopback only): the figures are of the gateway's work, not of token look-ups.
GATEWAY_ENV = {
    "MODACLOUDS_BATCH_TRACKER_INTERVAL": "2",
    "MODACLOUDS_BATCH_MAX_ACTIVE_JOBS_PER_USER": "1000000",
    "MODACLOUDS_BATCH_SUBMISSIONS_PER_MINUTE": "1000000",
    "MODACLOUDS_BATCH_AUTH": "false",
    "MODACLOUDS_BATCH_ARCHIVE_VALIDATIONS_PER_USER": "64",
    # The webhook receiver listens on loopback.
    "MODACLOUDS_BATCH_WEBHOOK_ALLOW_PRIVATE": "true",
}
STORE_BATCH = 500


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- numbers --------------------------------------------------------------------------------


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile of ``samples`` (seconds), in milliseconds."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1] * 1000


def latency(samples: list[float]) -> dict[str, float]:
    return {"n": len(samples), "p50_ms": round(percentile(samples, 50), 3),
            "p99_ms": round(percentile(samples, 99), 3), "mean_ms": round(statistics.mean(samples) * 1000, 3)}


def rate(count: int, seconds: float) -> dict[str, float]:
    return {"n": count, "seconds": round(seconds, 3), "per_second": round(count / seconds, 2)}


def ratio(gateway: float, raw: float) -> float:
    return round(gateway / raw, 3) if raw else float("nan")


# --- the pool, raw ----------------------------------------------------------------------------


@dataclass
class Pool:
    """The raw bindings, and every gateway instance id whose jobs the benchmark must remove."""

    condor_config: Path
    schedd: htcondor2.Schedd
    version: str
    instances: list[str]

    @classmethod
    def connect(cls, condor_config: Path) -> "Pool":
        configure(condor_config)
        ad = locate_schedd()
        return cls(condor_config, htcondor2.Schedd(ad), str(ad.get("CondorVersion", "unknown")), [])

    def track(self, instance_id: str) -> str:
        self.instances.append(instance_id)
        return instance_id

    def queue_size(self) -> int:
        return len(self.schedd.query("true", ["ClusterId"]))

    def wait_idle(self, cluster: int, timeout: float = 120.0) -> None:
        """Wait until the schedd has released every proc of ``cluster`` from its input-spooling hold.

        ``spool()`` returns before the schedd lets the procs go (about a second later), and
        until then they refuse actions such as hold.
        """
        deadline = time.monotonic() + timeout
        while self.schedd.query(f"ClusterId == {cluster} && JobStatus != 1", ["ProcId"], limit=1):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster {cluster} still spooling after {timeout}s")
            time.sleep(0.2)

    def remove_all(self, patience: float = 60.0) -> int:
        """Remove every job of every instance the benchmark used; returns how many matched.

        Retries (locating the schedd again) for ``patience`` seconds, since the pool may
        have been restarted meanwhile; then raises, naming the constraint to remove by hand.
        """
        if not self.instances:
            return 0
        ids = ", ".join(classad2.quote(i) for i in self.instances)
        constraint = f"member({sd.GATEWAY_INSTANCE}, {{{ids}}})"
        deadline = time.monotonic() + patience
        while True:
            try:
                result = self.schedd.act(htcondor2.JobAction.Remove, constraint, "benchmark finished")
                return int(result.get("TotalSuccess", 0))
            except htcondor2.HTCondorException as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not remove the benchmark's jobs ({exc}); remove them with "
                                       f"condor_rm -constraint '{constraint}'") from exc
                say(f"cleanup: the schedd does not answer ({exc}); retrying")
                time.sleep(2)
                try:
                    self.schedd = htcondor2.Schedd(locate_schedd())
                except htcondor2.HTCondorException as again:
                    say(f"cleanup: the schedd cannot be located yet: {again}")


def job_folder(root: Path, bundle: bytes) -> Path:
    """What a gateway job folder holds before submission: the bundle and its arguments file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / sd.BUNDLE_FILE).write_bytes(bundle)
    (root / sd.ARGUMENTS_FILE).write_text(sd.arguments_script([]))
    return root


def raw_spec(instance_id: str, job_dir: Path, job_id: str | None = None) -> sd.JobSpec:
    """The same job the gateway renders for a bundle upload, with the never-matching runtime."""
    return sd.JobSpec(job_id=job_id or str(uuid.uuid4()), instance_id=instance_id, owner=OWNER,
                      name="bench-raw", job_dir=job_dir, runtime=NEVER_RUNTIME)


# --- 1. submissions/s -----------------------------------------------------------------------------


def submit_form(i: int) -> dict[str, str]:
    return {"job-name": f"bench-{i}", "job-runtime": NEVER_RUNTIME, "job-runtime-wait": "true"}


def api_submits(url: str, bundle: bytes, count: int, clients: int) -> dict:
    """``count`` POST /jobs spread over ``clients`` threads, each with its own session."""
    per_client = [count // clients + (1 if c < count % clients else 0) for c in range(clients)]

    def client(n: int) -> None:
        http = requests.Session()
        for i in range(n):
            resp = http.post(url + "/jobs", files={"job-bundle": ("hello.tar.gz", bundle, "application/gzip")},
                             data=submit_form(i), timeout=120)
            if resp.status_code != 201:
                raise RuntimeError(f"POST /jobs answered {resp.status_code}: {resp.text[:500]}")

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client, n) for n in per_client]:
            future.result()
    return rate(count, time.perf_counter() - start)


def raw_submits(pool: Pool, job_dir: Path, instance_id: str, count: int) -> tuple[dict, list[str]]:
    """``count`` separate spooled submits of one proc each, from one thread.

    The submit descriptions are rendered before the clock starts: this is what the bindings
    and the schedd cost, the floor under the gateway's figure.
    """
    specs = [raw_spec(instance_id, job_dir) for _ in range(count)]
    descriptions = [sd.render_submit(spec) for spec in specs]
    start = time.perf_counter()
    for description in descriptions:
        result = pool.schedd.submit(description, count=1, spool=True)
        pool.schedd.spool(result)
    return rate(count, time.perf_counter() - start), [spec.job_id for spec in specs]


def tracker_cycles(http: requests.Session, url: str) -> float | None:
    """How many tracker cycles the gateway ran so far, from /metrics; None if it has no such metric.

    Its round-trip metric is not used: while submissions run it also counts their calls.
    """
    resp = http.get(url + "/metrics", timeout=30)
    if resp.status_code != 200:
        return None
    for line in resp.text.splitlines():
        if line.startswith("gateway_tracker_cycle_seconds_count "):
            return float(line.split()[1])
    return None


def with_tracker_activity(url: str, measure: Callable[[], dict]) -> dict:
    """``measure()``'s figure, plus how many tracker cycles (one schedd query each) ran meanwhile."""
    http = requests.Session()
    before = tracker_cycles(http, url)
    figure = measure()
    after = tracker_cycles(http, url)
    if before is not None and after is not None:
        figure["tracker_cycles_meanwhile"] = int(after - before)
    return figure


def interleaved(rounds: int, total: int, measures: dict[str, Callable[[int], dict]]) -> dict[str, dict]:
    """Run each measure on its share of ``total`` in turn, ``rounds`` times, and add up the figures.

    Interleaving keeps a slow spell of a shared machine from landing on one method only,
    so the ratios compare like with like.
    """
    shares = [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]
    sums: dict[str, dict] = {name: {"n": 0, "seconds": 0.0} for name in measures}
    for share in filter(None, shares):
        for name, measure in measures.items():
            figure = measure(share)
            for key, value in figure.items():
                if key != "per_second":
                    sums[name][key] = sums[name].get(key, 0) + value
    return {name: {**figure, **rate(figure["n"], figure["seconds"])} for name, figure in sums.items()}


def bench_submissions(args, pool: Pool, work: Path, bundle: bytes, stack: ExitStack) -> tuple[dict, list[str]]:
    home = work / "submit-gateway"
    gateway = start_gateway(home, pool, stack)
    url = gateway.url
    raw_instance = pool.track(f"bench-raw-{uuid.uuid4()}")
    job_dir = job_folder(work / "raw-job", bundle)
    say(f"submissions: warming up ({args.warmup} submits through the API, {args.warmup} raw)")
    api_submits(url, bundle, args.warmup, 1)
    raw_submits(pool, job_dir, raw_instance, args.warmup)
    raw_ids: list[str] = []

    def raw_share(count: int) -> dict:
        figure, ids = raw_submits(pool, job_dir, raw_instance, count)
        raw_ids.extend(ids)
        return figure

    say(f"submissions: {args.submits} POST /jobs from 1 client, {args.submits} from {args.clients} concurrent "
        f"clients and {args.submits} raw spooled submits, interleaved in {args.rounds} rounds")
    measured = interleaved(args.rounds, args.submits, {
        "sequential": lambda n: with_tracker_activity(url, lambda: api_submits(url, bundle, n, 1)),
        "concurrent": lambda n: with_tracker_activity(url, lambda: api_submits(url, bundle, n, args.clients)),
        "raw": raw_share,
    })
    sequential, concurrent, raw = measured["sequential"], measured["concurrent"], measured["raw"]
    figures = {
        "api_sequential": sequential,
        "api_concurrent": {**concurrent, "clients": args.clients},
        "raw_spooled": raw,
        "ratio_sequential_to_raw": ratio(sequential["per_second"], raw["per_second"]),
        "ratio_concurrent_to_raw": ratio(concurrent["per_second"], raw["per_second"]),
    }
    if args.busy_jobs:
        figures.update(bench_busy_gateway(args, pool, url, bundle, job_dir, raw_instance, raw))
    return figures, raw_ids


def bench_busy_gateway(args, pool: Pool, url: str, bundle: bytes, job_dir: Path, raw_instance: str,
                       raw: dict) -> dict:
    """An array of ``--busy-jobs`` items against one raw cluster; then single submits with them queued."""
    size = args.busy_jobs
    say(f"submissions: one array of {size} items through POST /jobs (job-count)")
    http = requests.Session()
    start = time.perf_counter()
    resp = http.post(url + "/jobs", files={"job-bundle": ("hello.tar.gz", bundle, "application/gzip")},
                     data={**submit_form(0), "job-count": str(size)}, timeout=600)
    array = rate(size, time.perf_counter() - start)
    if resp.status_code != 201:
        raise RuntimeError(f"POST /jobs (array of {size}) answered {resp.status_code}: {resp.text[:500]}")
    say(f"submissions: one raw cluster of {size} procs")
    *_, raw_seconds = raw_cluster(pool, raw_instance, job_dir, size)
    raw_array = rate(size, raw_seconds)
    # Queued, not just submitted: the tracker's change queries read a job again until its
    # last change is CHANGE_MARGIN old (docs/design.md).
    settle = CHANGE_MARGIN + 2
    say(f"submissions: {settle} s for the array to settle, then {args.submits} sequential POST /jobs with the "
        f"gateway's {size} jobs queued, and {args.submits} raw spooled submits with them queued")
    time.sleep(settle)
    busy = with_tracker_activity(url, lambda: api_submits(url, bundle, args.submits, 1))
    raw_busy, _ = raw_submits(pool, job_dir, raw_instance, args.submits)
    return {
        "api_array": array,
        "raw_cluster": raw_array,
        "ratio_array_to_raw_cluster": ratio(array["per_second"], raw_array["per_second"]),
        "api_sequential_busy": {**busy, "jobs_queued": size},
        "raw_spooled_busy": {**raw_busy, "jobs_queued": size},
        "ratio_sequential_busy_to_raw_busy": ratio(busy["per_second"], raw_busy["per_second"]),
        "ratio_sequential_busy_to_raw": ratio(busy["per_second"], raw["per_second"]),
    }


def start_gateway(home: Path, pool: Pool, stack: ExitStack, env: dict[str, str] | None = None) -> GatewayProcess:
    """A served gateway on a free port; its jobs are removed and it is stopped at the end."""
    gateway = GatewayProcess(home, pool.condor_config, env={**GATEWAY_ENV, **(env or {})})
    # The instance id exists before the gateway starts, so its jobs can always be cleaned up.
    store = Store(home / "gateway.db")
    pool.track(store.instance_id)
    store.close()
    stack.callback(gateway.stop)
    return gateway.start()


# --- 2. GET latency with many jobs in the store -------------------------------------------------


def synthetic_jobs(count: int, home: Path) -> Iterable[dict[str, Any]]:
    """Finished jobs as the tracker leaves them, created over the last days, newest last.

    Final states only, so the served gateway's tracker has nothing to follow.
    """
    rng = random.Random(7)
    now = datetime.now(timezone.utc)
    for i in range(count):
        created = now - timedelta(seconds=(count - i) * 20)
        roll = rng.random()
        state, status, exit_status, reason = (
            ("completed", "Completed", 0, "run.sh exited with status 0") if roll < 0.8 else
            ("failed", "Completed", 1, "run.sh exited with status 1") if roll < 0.95 else
            ("removed", "Removed", None, "removed by the user"))
        job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        yield {
            "id": job_id, "name": f"synthetic-{i}", "owner": OWNER, "state": state, "state_reason": reason,
            "backend_status": status, "cluster_id": 1_000_000 + i, "proc_id": 0,
            "global_job_id": f"bench#{1_000_000 + i}.0#{int(created.timestamp())}",
            "arguments": json.dumps(["-foo", f"item {i}"]), "notification_events": "final", "has_input": 0,
            "job_dir": str(home / "jobs" / job_id), "created_at": to_iso(created),
            "updated_at": to_iso(created + timedelta(seconds=15)),
            "started_at": to_iso(created + timedelta(seconds=5)),
            "completed_at": to_iso(created + timedelta(seconds=15)),
            "exit_status": exit_status, "exit_by_signal": 0, "run_count": 1, "priority": 0, "universe": 5,
            "image_size_kb": 2500, "cpu_user_seconds": 0.01, "cpu_system_seconds": 0.01,
            "remote_host": "slot1@bench", "kind": "bundle",
            "outputs_retrieved_at": None if state == "removed" else to_iso(created + timedelta(seconds=16)),
        }


def fill_store(home: Path, count: int) -> tuple[list[str], str]:
    """Write ``count`` job rows straight into a fresh store; returns their ids and the instance id."""
    store = Store(home / "gateway.db")
    ids: list[str] = []
    batch: list[dict[str, Any]] = []
    try:
        for job in synthetic_jobs(count, home):
            ids.append(job["id"])
            batch.append(job)
            if len(batch) == STORE_BATCH:
                store.insert_jobs(batch, reason="submitted")
                batch = []
        if batch:
            store.insert_jobs(batch, reason="submitted")
        return ids, store.instance_id
    finally:
        store.close()


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process, from /proc (None where there is no /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def time_gets(http: requests.Session, urls: list[str]) -> list[float]:
    samples = []
    for url in urls:
        start = time.perf_counter()
        resp = http.get(url, timeout=30)
        samples.append(time.perf_counter() - start)
        if resp.status_code != 200:
            raise RuntimeError(f"GET {url} answered {resp.status_code}: {resp.text[:300]}")
    return samples


def bench_reads(args, pool: Pool, work: Path, stack: ExitStack, queued_ids: list[str]) -> dict:
    home = work / "read-gateway"
    home.mkdir(parents=True)
    say(f"reads: filling a fresh store with {args.jobs_in_store} jobs")
    start = time.perf_counter()
    ids, _ = fill_store(home, args.jobs_in_store)
    fill_seconds = time.perf_counter() - start
    gateway = start_gateway(home, pool, stack)
    http = requests.Session()
    rng = random.Random(11)
    time_gets(http, [f"{gateway.url}/jobs/{rng.choice(ids)}" for _ in range(args.warmup * 5)])

    say(f"reads: {args.gets} GET /jobs/{{id}} of random ids, {args.list_gets} GET /jobs")
    one = time_gets(http, [f"{gateway.url}/jobs/{rng.choice(ids)}" for _ in range(args.gets)])
    page = time_gets(http, [f"{gateway.url}/jobs"] * args.list_gets)

    say(f"reads: {args.raw_queries} raw schedd.query of one job by {sd.GATEWAY_JOB_ID}")
    queue = pool.queue_size()
    constraints = [f"{sd.GATEWAY_JOB_ID} == {classad2.quote(rng.choice(queued_ids))}"
                   for _ in range(args.raw_queries)]
    raw = []
    for constraint in constraints:
        start = time.perf_counter()
        ads = pool.schedd.query(constraint, sd.JOB_PROJECTION)
        raw.append(time.perf_counter() - start)
        if len(ads) != 1:
            raise RuntimeError(f"raw query {constraint} found {len(ads)} jobs, expected 1")
    get_one, get_page, raw_one = latency(one), latency(page), latency(raw)
    return {
        "gateway_rss_mb": rss_mb(gateway.proc.pid),
        "jobs_in_store": args.jobs_in_store,
        "store_fill_seconds": round(fill_seconds, 2),
        "get_job": get_one,
        "list_jobs_first_page": {**get_page, "page_size": 100},
        "raw_query_one_job": {**raw_one, "jobs_in_queue": queue},
        "ratio_get_job_p50_to_raw": ratio(get_one["p50_ms"], raw_one["p50_ms"]),
        "ratio_get_job_p99_to_raw": ratio(get_one["p99_ms"], raw_one["p99_ms"]),
    }


# --- 3. schedd round trips per tracker cycle ------------------------------------------------------


def raw_cluster(pool: Pool, instance_id: str, job_dir: Path, size: int) -> tuple[int, int, list[str], float]:
    """One spooled cluster of ``size`` procs, each its own gateway job id (as the gateway's arrays do).

    Returns the cluster, its first proc, the job ids and the seconds submit + spool took.
    """
    items = [(str(uuid.uuid4()), job_dir) for _ in range(size)]
    description = sd.render_submit(raw_spec(instance_id, job_dir, items[0][0]), per_item=True)
    itemdata = sd.item_data(items)
    start = time.perf_counter()
    result = pool.schedd.submit(description, spool=True, itemdata=iter(itemdata))
    pool.schedd.spool(result)
    seconds = time.perf_counter() - start
    return result.cluster(), result.first_proc(), [job_id for job_id, _ in items], seconds


def queue_tracked_cluster(pool: Pool, store: Store, job_dir: Path, size: int) -> int:
    """One raw cluster of ``size`` procs, each a gateway job of ``store``'s instance, recorded there."""
    cluster, first, job_ids, _ = raw_cluster(pool, store.instance_id, job_dir, size)
    now = to_iso(datetime.now(timezone.utc))
    store.insert_jobs([
        {"id": job_id, "name": f"tracked-{index}", "owner": OWNER, "state": "idle", "backend_status": "Idle",
         "cluster_id": cluster, "proc_id": first + index, "arguments": "[]", "has_input": 0,
         "job_dir": str(job_dir), "created_at": now, "updated_at": now, "kind": "bundle", "runtime": NEVER_RUNTIME}
        for index, job_id in enumerate(job_ids)
    ], reason="submitted")
    return cluster


def cycle_figures(tracker, cycles: int) -> dict:
    reports, durations = [], []
    for _ in range(cycles):
        start = time.perf_counter()
        reports.append(tracker.run_cycle())
        durations.append(time.perf_counter() - start)
    errors = [e for r in reports for e in r.errors]
    if errors:
        raise RuntimeError(f"tracker cycle reported errors: {errors[:3]}")
    return {
        "cycles": cycles,
        "round_trips": sorted({r.round_trips for r in reports}),
        "jobs_tracked": reports[-1].jobs_tracked,
        "ads_read": reports[-1].ads_read,
        "full": reports[-1].full,
        "changes": reports[-1].changes,
        "duration_ms_median": round(statistics.median(durations) * 1000, 2),
        "duration_ms_max": round(max(durations) * 1000, 2),
    }


def bench_tracker(args, pool: Pool, work: Path, bundle: bytes, size: int) -> dict:
    home = work / f"tracker-{size}"
    gateway = build_gateway(Settings(home=home, condor_config=pool.condor_config))
    try:
        pool.track(gateway.store.instance_id)
        job_dir = job_folder(home / "jobs" / "shared", bundle)
        say(f"tracker: queueing one cluster of {size} procs")
        start = time.perf_counter()
        cluster = queue_tracked_cluster(pool, gateway.store, job_dir, size)
        queue_seconds = time.perf_counter() - start
        pool.wait_idle(cluster)
        tracker = gateway.tracker
        # The first cycle records every job's ad details (one write per job); later ones find nothing new.
        first = cycle_figures(tracker, 1)
        # Steady means no change for CHANGE_MARGIN: one cycle past it, then the timed ones.
        time.sleep(CHANGE_MARGIN + 1)
        tracker.run_cycle()
        # Steady cycles between two reconciliations read only what changed (nothing, here)...
        steady = cycle_figures(tracker, args.tracker_cycles)
        # ... and a full one (every reconcile_interval) reads every ad again.
        reconcile, tracker.reconcile_interval = tracker.reconcile_interval, 0.0
        steady_full = cycle_figures(tracker, args.tracker_cycles)
        tracker.reconcile_interval = reconcile
        # Every job changes state at once: the same round trips, one store transaction.
        pool.schedd.act(htcondor2.JobAction.Hold, f"ClusterId == {cluster}", "benchmark")
        all_change = cycle_figures(tracker, 1)
        return {"jobs": size, "queue_cluster_seconds": round(queue_seconds, 2), "first_cycle": first,
                "steady_cycle": steady, "steady_full_cycle": steady_full, "all_jobs_change_cycle": all_change}
    finally:
        gateway.store.close()


# --- the run ----------------------------------------------------------------------------------------


# --- 4. webhook delay ------------------------------------------------------------------------


def bench_webhooks(args, pool: Pool, work: Path, bundle: bytes, stack: ExitStack) -> dict:
    """Jobs that really run; each one's webhook arrival minus the schedd's CompletionDate."""
    receiver = Receiver()
    stack.callback(receiver.close)
    gateway = start_gateway(work / "webhooks", pool, stack)
    http = requests.Session()
    ids = []
    for i in range(args.webhook_jobs):
        resp = http.post(f"{gateway.url}/jobs", files={"job-bundle": ("hello.tar.gz", bundle)},
                         data={"job-name": f"bench-webhook-{i}", "job-notification": f"{receiver.url}/hook"},
                         timeout=60)
        resp.raise_for_status()
        ids.append(resp.json()["job_id"])
    arrivals = {r["json"]["job-uuid"]: r["at"] for r in receiver.wait_for(len(ids), timeout=args.webhook_timeout)}
    quoted = ", ".join(classad2.quote(j) for j in ids)
    constraint = f"member({sd.GATEWAY_JOB_ID}, {{{quoted}}}) && CompletionDate > 0"
    projection = [sd.GATEWAY_JOB_ID, "CompletionDate"]
    # A notified job may still be in the queue (leaving it) or already in the history.
    ads = list(pool.schedd.query(constraint, projection)) + list(pool.schedd.history(constraint, projection, match=len(ids)))
    completed = {str(ad[sd.GATEWAY_JOB_ID]): int(ad["CompletionDate"]) for ad in ads}
    delays = sorted(arrivals[j] - completed[j] for j in ids if j in completed and j in arrivals)
    return {
        "n": len(delays),
        "median_s": round(statistics.median(delays), 2),
        "p95_s": round(percentile(delays, 95) / 1000, 2),
        "max_s": round(max(delays), 2),
        "tracker_interval_s": float(GATEWAY_ENV["MODACLOUDS_BATCH_TRACKER_INTERVAL"]),
        "note": "CompletionDate has 1 s resolution, so each delay is known to within 1 s",
    }


# --- 5. live-output delay -----------------------------------------------------------------------

# Prints "line <n> <epoch seconds with ns>" every half second: each line says when it was printed.
TICKER = b"""#!/bin/sh
n=0
while [ "$n" -lt "$1" ]; do
    n=$((n + 1))
    echo "line $n $(date +%s.%N)"
    sleep 0.5
done
"""
LIVE_POLL_SECONDS = 0.05


def _arrivals(read: Callable[[int], bytes | None], lines: int, timeout: float) -> dict[int, float]:
    """Poll ``read(offset)`` (the bytes past offset, or None) until ``lines`` lines arrived:
    each line's delay from its printed time to the moment it was first read."""
    delays: dict[int, float] = {}
    offset, pending = 0, b""
    deadline = time.monotonic() + timeout
    while len(delays) < lines and time.monotonic() < deadline:
        chunk = read(offset)
        if chunk:
            now = time.time()
            offset += len(chunk)
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                _, number, printed = line.decode().split()
                delays[int(number)] = now - float(printed)
        time.sleep(LIVE_POLL_SECONDS)
    return delays


def _read_file_from(path: Path, offset: int) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read()
    except FileNotFoundError:
        return None


def bench_live_output(args, pool: Pool, work: Path, stack: ExitStack) -> dict:
    """One job printing ``args.live_lines`` lines; their delays via the API and in the spool."""
    gateway = start_gateway(work / "live", pool, stack, env={"MODACLOUDS_BATCH_LIVE_OUTPUT": "true"})
    http = requests.Session()
    resp = http.post(f"{gateway.url}/jobs", files={"job-bundle": ("ticker.tar.gz", pack(None, {"run.sh": TICKER}))},
                     data={"job-name": "bench-live", "job-arguments": str(args.live_lines)}, timeout=60)
    resp.raise_for_status()
    job_id = resp.json()["job_id"]
    url = f"{gateway.url}/jobs/{job_id}/artifacts/stdout"

    def through_api(offset: int) -> bytes | None:
        answer = http.get(url, headers={"Range": f"bytes={offset}-"}, timeout=10)
        return answer.content if answer.status_code in (200, 206) else None

    # Where HTCondor streams it: the job's spool folder, from its ad, read directly.
    deadline = time.monotonic() + 120
    while not (ads := pool.schedd.query(f"{sd.GATEWAY_JOB_ID} == {classad2.quote(job_id)} && JobStatus == 2",
                                        ["Iwd"])):
        if time.monotonic() > deadline:
            raise RuntimeError("the live-output job did not start within 120 s")
        time.sleep(0.2)
    spool_file = Path(ads[0]["Iwd"]) / sd.STDOUT_FILE
    timeout = args.live_lines * 0.5 + 60
    with ThreadPoolExecutor(2) as both:
        api = both.submit(_arrivals, through_api, args.live_lines, timeout)
        raw = both.submit(_arrivals, lambda offset: _read_file_from(spool_file, offset), args.live_lines, timeout)
        api_delays, raw_delays = api.result(), raw.result()
    # The first lines may be printed before the job is seen running: compare the lines both saw.
    common = sorted(set(api_delays) & set(raw_delays))
    api_s = sorted(api_delays[n] for n in common)
    raw_s = sorted(raw_delays[n] for n in common)
    return {
        "n": len(common),
        "api_median_s": round(statistics.median(api_s), 3),
        "api_p95_s": round(percentile(api_s, 95) / 1000, 3),
        "spool_median_s": round(statistics.median(raw_s), 3),
        "spool_p95_s": round(percentile(raw_s, 95) / 1000, 3),
        "api_minus_spool_median_s": round(statistics.median(a - r for a, r in zip(
            (api_delays[n] for n in common), (raw_delays[n] for n in common))), 3),
        "poll_s": LIVE_POLL_SECONDS,
        "tracker_interval_s": float(GATEWAY_ENV["MODACLOUDS_BATCH_TRACKER_INTERVAL"]),
    }


def run(args) -> dict:
    condor_config = Path(args.condor_config or load_settings().condor_config)
    if not condor_config.is_file():
        raise SystemExit(f"no pool client config at {condor_config}: run `modaclouds-batch pool up` first "
                         "(or pass --condor-config)")
    pool = Pool.connect(condor_config)
    bundle = pack_bundle("hello")
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": to_iso(datetime.now(timezone.utc)),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "htcondor_bindings": htcondor2.version(), "pool_schedd": pool.version},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "condor_config": str(condor_config),
        "bundle_bytes": len(bundle),
    }
    work = Path(tempfile.mkdtemp(prefix="modaclouds-bench-"))
    try:
        with ExitStack() as stack:
            results["submit"], raw_ids = bench_submissions(args, pool, work, bundle, stack)
            results["read"] = bench_reads(args, pool, work, stack, raw_ids)
        results["tracker"] = [bench_tracker(args, pool, work, bundle, size) for size in args.tracker_sizes]
        if args.webhook_jobs:
            with ExitStack() as stack:
                results["webhooks"] = bench_webhooks(args, pool, work, bundle, stack)
        if args.live_lines:
            with ExitStack() as stack:
                results["live_output"] = bench_live_output(args, pool, work, stack)
    finally:
        say("cleaning up: removing the benchmark's jobs and its temporary homes")
        try:
            results["cleanup_removed_jobs"] = pool.remove_all()
        finally:
            if args.keep_homes:
                say(f"kept the gateway homes (databases, logs) in {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    return results


def table(results: dict) -> str:
    s, r = results["submit"], results["read"]
    lines = [
        f"modaclouds-batch benchmark, {results['date']}",
        f"machine: {results['machine']['cpus']} cpus, {results['machine']['platform']}, "
        f"python {results['machine']['python']}",
        f"htcondor bindings: {results['machine']['htcondor_bindings']}",
        f"pool schedd: {results['machine']['pool_schedd']}",
        f"load average (1, 5, 15 min): {results['load_average_at_start']} at start, "
        f"{results['load_average_at_end']} at end",
        "",
        "1. submissions/s (tiny hello bundle, spooled)",
        f"   {'':38}{'n':>6}{'seconds':>10}{'per s':>10}{'vs raw':>9}{'tracker cycles':>16}",
    ]

    def row(label, figure, vs=None):
        vs_text = f"{vs:>9.2f}" if vs is not None else f"{'':>9}"
        tracker = f"{figure['tracker_cycles_meanwhile']:>16}" if "tracker_cycles_meanwhile" in figure else ""
        return (f"   {label:38}{figure['n']:>6}{figure['seconds']:>10.2f}{figure['per_second']:>10.1f}{vs_text}"
                f"{tracker}")

    lines += [
        row("POST /jobs, 1 client", s["api_sequential"], s["ratio_sequential_to_raw"]),
        row(f"POST /jobs, {s['api_concurrent']['clients']} concurrent clients", s["api_concurrent"],
            s["ratio_concurrent_to_raw"]),
        row("raw submit(spool=True) + spool()", s["raw_spooled"]),
    ]
    if "api_array" in s:
        busy = s["api_sequential_busy"]
        lines += [
            row(f"POST /jobs, 1 client, {busy['jobs_queued']} jobs queued", busy, s["ratio_sequential_busy_to_raw"]),
            *([row(f"raw spooled, {busy['jobs_queued']} jobs queued", s["raw_spooled_busy"])]
              if "raw_spooled_busy" in s else []),
            row(f"POST /jobs job-count={s['api_array']['n']} (jobs/s)", s["api_array"], s["ratio_array_to_raw_cluster"]),
            row(f"raw cluster of {s['raw_cluster']['n']} procs (jobs/s)", s["raw_cluster"]),
        ]
    lines += [
        "",
        f"2. read latency, {r['jobs_in_store']} jobs in the store (ms)",
        f"   {'':38}{'n':>6}{'p50':>10}{'p99':>10}{'mean':>9}",
    ]
    for label, figure in (("GET /jobs/{id}", r["get_job"]),
                          (f"GET /jobs (first page of {r['list_jobs_first_page']['page_size']})",
                           r["list_jobs_first_page"]),
                          (f"raw schedd.query, 1 job of {r['raw_query_one_job']['jobs_in_queue']} queued",
                           r["raw_query_one_job"])):
        lines.append(f"   {label:38}{figure['n']:>6}{figure['p50_ms']:>10.2f}{figure['p99_ms']:>10.2f}"
                     f"{figure['mean_ms']:>9.2f}")
    lines += [f"   GET /jobs/{{id}} vs raw: p50 x{r['ratio_get_job_p50_to_raw']}, p99 x{r['ratio_get_job_p99_to_raw']}",
              "",
              "3. tracker cycle (real Tracker.run_cycle, real CondorClient)",
              f"   {'jobs':>6}  {'cycle':18}{'round trips':>12}{'ads read':>9}{'changes':>9}{'median ms':>11}"
              f"{'max ms':>9}"]
    for t in results["tracker"]:
        for label, key in (("first", "first_cycle"), ("steady", "steady_cycle"), ("steady full", "steady_full_cycle"),
                           ("all change", "all_jobs_change_cycle")):
            c = t[key]
            trips = ",".join(str(n) for n in c["round_trips"])
            lines.append(f"   {t['jobs']:>6}  {label + ' x' + str(c['cycles']):18}{trips:>12}{c['ads_read']:>9}"
                         f"{c['changes']:>9}{c['duration_ms_median']:>11.1f}{c['duration_ms_max']:>9.1f}")
    if "webhooks" in results:
        w = results["webhooks"]
        lines += ["", f"4. webhook delay after the schedd records completion ({w['n']} jobs that ran, "
                      f"tracker every {w['tracker_interval_s']:.0f} s)",
                  f"   median {w['median_s']:.2f} s, p95 {w['p95_s']:.2f} s, max {w['max_s']:.2f} s ({w['note']})"]
    if "live_output" in results:
        v = results["live_output"]
        lines += ["", f"5. live-output delay, job prints -> client reads ({v['n']} lines, clients poll every "
                      f"{v['poll_s']} s, tracker every {v['tracker_interval_s']:.0f} s)",
                  f"   GET stdout with Range   median {v['api_median_s']:.3f} s, p95 {v['api_p95_s']:.3f} s",
                  f"   spool file, read raw    median {v['spool_median_s']:.3f} s, p95 {v['spool_p95_s']:.3f} s",
                  f"   the gateway adds (median per line) {v['api_minus_spool_median_s']:.3f} s"]
    lines += ["", *targets_table(results),
              "", f"removed {results['cleanup_removed_jobs']} benchmark jobs; total {results['total_seconds']} s"]
    return "\n".join(lines)


def targets(results: dict) -> list[dict[str, Any]]:
    """The figures of issue 20's table: each value beside its reference in the same run, the
    ratio, and the target (a ratio, or a bound where there is no raw reference)."""
    s, r, out = results["submit"], results["read"], []

    def add(figure, value, reference, ratio_value, target, unit=""):
        out.append({"figure": figure, "value": value, "reference": reference, "ratio": ratio_value,
                    "target": target, "unit": unit})

    seq, conc, raw = s["api_sequential"], s["api_concurrent"], s["raw_spooled"]
    add("POST /jobs, 1 client / raw spooled submit", seq["per_second"], raw["per_second"],
        ratio(seq["per_second"], raw["per_second"]), ">= 0.85", "jobs/s")
    add(f"POST /jobs, {conc['clients']} clients / 1 client", conc["per_second"], seq["per_second"],
        ratio(conc["per_second"], seq["per_second"]), ">= 1.6", "jobs/s")
    if "api_sequential_busy" in s:
        busy = s["api_sequential_busy"]
        add(f"POST /jobs with {busy['jobs_queued']} queued / none queued", busy["per_second"], seq["per_second"],
            ratio(busy["per_second"], seq["per_second"]), ">= 0.9 at 10000", "jobs/s")
        if "raw_spooled_busy" in s:
            raw_busy = s["raw_spooled_busy"]
            add(f"  the same, raw: {raw_busy['jobs_queued']} queued / none queued", raw_busy["per_second"],
                raw["per_second"], ratio(raw_busy["per_second"], raw["per_second"]), "(the schedd's own)", "jobs/s")
    if len(results.get("tracker", [])) >= 2:
        small, large = min(results["tracker"], key=lambda t: t["jobs"]), max(results["tracker"], key=lambda t: t["jobs"])
        a, b = large["steady_cycle"]["duration_ms_median"], small["steady_cycle"]["duration_ms_median"]
        add(f"tracker steady cycle, {large['jobs']} jobs / {small['jobs']} jobs", a, b, ratio(a, b), "<= 2", "ms")
    if "webhooks" in results:
        w = results["webhooks"]
        add("completion -> webhook, median", w["median_s"], w["tracker_interval_s"], None, "<= 0.5", "s")
        add("completion -> webhook, p95", w["p95_s"], w["tracker_interval_s"], None, "<= 1.5", "s")
    raw_q = r["raw_query_one_job"]
    add(f"GET /jobs/{{id}} p99, {r['jobs_in_store']} in the store", r["get_job"]["p99_ms"], raw_q["p99_ms"],
        ratio(r["get_job"]["p99_ms"], raw_q["p99_ms"]), "<= 10", "ms")
    add(f"GET /jobs first page p99, {r['jobs_in_store']} in the store", r["list_jobs_first_page"]["p99_ms"],
        raw_q["p99_ms"], ratio(r["list_jobs_first_page"]["p99_ms"], raw_q["p99_ms"]), "<= 15", "ms")
    add(f"gateway RSS, {r['jobs_in_store']} in the store, idle", r.get("gateway_rss_mb"), None, None, "<= 150", "MB")
    return out


def targets_table(results: dict) -> list[str]:
    """Issue 20's table, as measured (reference: the raw bindings, the other figure of the ratio,
    the tracker interval for webhooks, one raw schedd.query for reads)."""
    lines = ["6. issue 20's figures (value, its reference in this run, ratio, target)",
             f"   {'figure':52}{'value':>10}{'reference':>11}{'ratio':>8}  target"]
    for t in targets(results):
        fmt = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
        lines.append(f"   {t['figure']:52}{fmt(t['value']) + ' ' + t['unit']:>10}{fmt(t['reference']):>11}"
                     f"{fmt(t['ratio']):>8}  {t['target']}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--condor-config", type=Path,
                        help="client condor_config of the pool (default: the one `pool up` writes)")
    parser.add_argument("--submits", type=int, default=100, help="timed submissions per method (default 100)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="the submit methods take turns in this many rounds (default 4)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent API clients (default 4)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed submissions before each method (default 5)")
    parser.add_argument("--busy-jobs", type=int, default=1000,
                        help="items of the array submitted through the API before timing submits again with "
                             "them queued (default 1000; 0 skips)")
    parser.add_argument("--jobs-in-store", type=int, default=10_000, help="synthetic jobs for the read figures")
    parser.add_argument("--gets", type=int, default=2000, help="timed GET /jobs/{id} (default 2000)")
    parser.add_argument("--list-gets", type=int, default=200, help="timed GET /jobs (default 200)")
    parser.add_argument("--raw-queries", type=int, default=500, help="timed raw schedd queries (default 500)")
    parser.add_argument("--tracker-sizes", type=lambda v: [int(x) for x in v.split(",")], default=[10, 1000],
                        help="jobs per tracker measurement, comma-separated (default 10,1000)")
    parser.add_argument("--keep-homes", action="store_true",
                        help="keep the temporary gateway homes (databases, gateway.log) for inspection")
    parser.add_argument("--tracker-cycles", type=int, default=5, help="steady cycles timed per size (default 5)")
    parser.add_argument("--webhook-jobs", type=int, default=50,
                        help="jobs that run for the webhook delay figure (default 50; 0 skips)")
    parser.add_argument("--webhook-timeout", type=float, default=600.0,
                        help="seconds to wait for all their webhooks (default 600)")
    parser.add_argument("--live-lines", type=int, default=40,
                        help="lines the live-output job prints, one every 0.5 s (default 40; 0 skips)")
    args = parser.parse_args(argv)
    if min(args.submits, args.clients, args.rounds, args.jobs_in_store, args.gets, args.list_gets, args.raw_queries,
           args.tracker_cycles, *args.tracker_sizes) < 1 or args.warmup < 1 or args.busy_jobs < 0:
        parser.error("every size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    if args.json:
        results["targets"] = targets(results)
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
