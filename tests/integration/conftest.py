"""Integration fixtures: the real pool (brought up once, or an existing one), a served gateway."""

from __future__ import annotations

import os

import pytest

from modaclouds_batch.settings import load_settings

from .fixtures import *  # noqa: F401,F403  (gateway, client, schedd, ...)


@pytest.fixture(scope="session")
def pool():
    """Settings whose condor_config reaches a running pool.

    With MODACLOUDS_BATCH_CONDOR_CONFIG set, that pool is used as it is; otherwise the
    managed single-node pool is brought up (idempotent) and left running for later runs.
    """
    settings = load_settings()
    if not os.environ.get("MODACLOUDS_BATCH_CONDOR_CONFIG"):
        from modaclouds_batch.condor import pool as pool_tooling

        pool_tooling.up(settings)
    return settings
