"""The condor contract's scenarios (tests/condor_contract.py) against the real CondorClient
on the real pool; tests/unit/test_condor_contract.py runs them against the fake."""

import pytest

from modaclouds_batch.condor.schedd import CondorClient
from tests.condor_contract import SCENARIOS


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_the_real_client_keeps_the_condor_contract(scenario, tmp_path, condor_config):
    scenario(CondorClient(condor_config), tmp_path)
