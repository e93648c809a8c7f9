"""The condor contract's scenarios (tests/condor_contract.py) against the fake; the same
scenarios run against the real client on the real pool in tests/integration/."""

import pytest

from tests.condor_contract import SCENARIOS

from .fakes import FakeCondor


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_the_fake_keeps_the_condor_contract(scenario, tmp_path):
    scenario(FakeCondor(), tmp_path)
