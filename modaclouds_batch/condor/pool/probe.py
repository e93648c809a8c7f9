"""Ask the pool, as the gateway would, what answers: collector, schedd, startd slots.

It runs in a child process (``python probe.py CONFIG [WAIT]``, this file, no imports of the package):
htcondor2 reads its configuration into process-wide state, and `status` must not change
the caller's CONDOR_CONFIG; a child also bounds a hung query by a timeout. It prints one
JSON object on stdout.

Slots are counted in cores: one partitionable slot of 8 cores is 8 places for one-core
jobs, ``slots_free`` of them unused; static slots count their own cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

SLOT_ATTRS = ["Name", "SlotType", "Cpus", "TotalSlotCpus", "State"]


def count_slots(ads: list[dict]) -> tuple[int, int]:
    """(total, free) cores over partitionable and static slots; dynamic ones are inside."""
    total = free = 0
    for ad in ads:
        kind = ad.get("SlotType", "Static")
        if kind == "Dynamic":
            continue
        cpus = int(ad.get("Cpus", 0) or 0)
        total += int(ad.get("TotalSlotCpus", cpus) or 0)
        if kind == "Partitionable" or ad.get("State") == "Unclaimed":
            free += cpus
    return total, free


def nothing_answers(error: str | None = None) -> dict:
    return {"collector": False, "schedd": None, "schedd_answers": False,
            "slots_total": 0, "slots_free": 0, "startds": [], "error": error}


def observe() -> dict:
    """One look at the pool through the bindings (CONDOR_CONFIG already set)."""
    import htcondor2

    out = nothing_answers()
    try:
        collector = htcondor2.Collector()
        schedds = collector.query(htcondor2.AdType.Schedd)  # Schedd(ad) needs the whole ad
        out["collector"] = True
        slots = collector.query(htcondor2.AdType.Startd, projection=SLOT_ATTRS)
        ads = [{k: ad.get(k) for k in SLOT_ATTRS if k in ad} for ad in slots]
        out["slots_total"], out["slots_free"] = count_slots(ads)
        out["startds"] = sorted({str(ad.get("Name", "")).split("@", 1)[-1] for ad in ads})
        if schedds:
            ad = schedds[0]
            out["schedd"] = {"name": str(ad.get("Name")), "address": str(ad.get("MyAddress"))}
            htcondor2.Schedd(ad).query("false", ["ClusterId"])
            out["schedd_answers"] = True
    except Exception as exc:  # every failure is the answer here, reported to the caller
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def is_ready(obs: dict) -> bool:
    return bool(obs["collector"] and obs["schedd_answers"] and obs["slots_total"] > 0)


def main(argv: list[str]) -> int:
    config, wait = argv[0], float(argv[1]) if len(argv) > 1 else 0.0
    os.environ["CONDOR_CONFIG"] = config
    import htcondor2

    htcondor2.reload_config()
    deadline = time.monotonic() + wait
    obs = observe()
    while not is_ready(obs) and time.monotonic() < deadline:
        time.sleep(0.5)
        obs = observe()
    print(json.dumps(obs))
    return 0


def probe(client_config: Path, wait: float = 0.0) -> dict:
    """Run the probe in a child process; wait up to ``wait`` s for a ready pool."""
    env = {k: v for k, v in os.environ.items() if k != "CONDOR_CONFIG"}
    try:
        proc = subprocess.run(
            [sys.executable, "-P", str(Path(__file__).resolve()), str(client_config), str(wait)],
            capture_output=True, text=True, env=env, timeout=wait + 60, check=False)
    except subprocess.TimeoutExpired:
        return nothing_answers("the probe itself timed out")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return nothing_answers(f"probe failed: {proc.stderr.strip()[-500:]}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
