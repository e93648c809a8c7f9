"""One HTCondor call policy per process (condor/session.py), not one lock per client."""

import ast
from pathlib import Path

from modaclouds_batch.condor import collector, schedd
from modaclouds_batch.condor.session import POLICY

CONDOR = Path(schedd.__file__).parent


def test_every_kind_of_call_holds_the_one_process_wide_lock():
    locks = {id(POLICY.lock_for(kind)) for kind in ("submit", "schedd", "collector", "config")}
    assert len(locks) == 1


def test_no_condor_client_makes_a_lock_of_its_own():
    for module in (schedd, collector):
        tree = ast.parse(Path(module.__file__).read_text())
        made = [node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute) and node.func.attr in ("Lock", "RLock")]
        assert made == [], f"{module.__name__} makes its own lock: use condor.session.POLICY"


def test_a_lock_held_elsewhere_blocks_both_clients():
    """What the clients hold is POLICY's lock: taken here, neither may take it in another thread."""
    import threading

    got = []
    with POLICY.lock_for("submit"):
        probe = threading.Thread(target=lambda: got.append(POLICY.lock_for("collector").acquire(timeout=0.05)))
        probe.start()
        probe.join()
    assert got == [False]
