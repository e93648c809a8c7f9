"""Fixtures many unit test files share; a file defining its own fixture of the same name wins."""

import pytest

from modaclouds_batch.app import build_gateway
from modaclouds_batch.settings import load_settings


@pytest.fixture
def gateway(tmp_path):
    """A gateway with its defaults and a home of its own; nothing contacts a pool."""
    gw = build_gateway(load_settings(overrides={"home": tmp_path}, environ={}))
    yield gw
    gw.store.close()
