"""The dialect seam: every door maps every core state, is listed at GET /, and is described."""

import falcon.testing
import pytest

from modaclouds_batch.app import build_gateway, create_app
from modaclouds_batch.dialects import Dialect, all_dialects, merged_openapi
from modaclouds_batch.jobs.states import JobState
from modaclouds_batch.settings import load_settings


@pytest.fixture
def app(tmp_path):
    gw = build_gateway(load_settings(overrides={"home": tmp_path}, environ={}))
    yield create_app(gw)
    gw.store.close()


@pytest.mark.parametrize("dialect", all_dialects(), ids=lambda d: d.seed)
def test_every_dialect_maps_every_core_state_to_a_word_of_its_own(dialect):
    assert set(dialect.states) == set(JobState), f"{dialect.name}: unmapped {set(JobState) - set(dialect.states)}"
    assert all(isinstance(word, str) and word for word in dialect.states.values())


def test_seeds_and_bases_are_unique():
    dialects = all_dialects()
    assert len({d.seed for d in dialects}) == len(dialects)
    assert len({d.base for d in dialects}) == len(dialects)


def test_the_index_lists_every_dialect_with_its_seed_base_and_docs(app):
    resp = falcon.testing.TestClient(app).simulate_get("/")
    assert resp.status_code == 200
    apis = resp.json["apis"]
    assert {"name": "MODAClouds batch API", "seed": "004", "base": "/", "docs": "docs/api.md"} in apis
    assert [a["seed"] for a in apis] == [d.seed for d in all_dialects()]


def test_a_path_described_twice_is_refused():
    class Clash(Dialect):
        def openapi_fragment(self):
            return {"paths": {"/jobs": {}}}

    clash = Clash(name="clash", seed="x", base="/x", docs="", register=lambda app, gw: None)
    core = {"paths": {"/jobs": {}}, "components": {}}
    with pytest.raises(ValueError, match="/jobs"):
        merged_openapi(core, [clash])
