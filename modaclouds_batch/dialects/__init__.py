"""The doors into the one job service: each dialect is a thin HTTP translation.

A dialect owns only its routes, its request parsing, its answer shapes and its state words;
every job it creates or acts on goes through the same services (``Gateway``), so isolation,
quotas, audit and webhooks are shared. A new door is one module here:

- a module-level ``DIALECT = Dialect(...)``: its name, seed number, base path, docs page, a
  ``register(app, gateway)`` that adds its routes, its ``states`` table (every core
  ``JobState`` to the dialect's word) and, optionally, the file name of its OpenAPI
  fragment (``{"paths": ..., "components": ...}``) beside the module;
- its module name in ``MODULES`` below.

Its resources submit through ``api.jobs.submit_job(gateway.submission, ...)`` (the path
``POST /jobs`` takes), read and act through ``gateway.service`` (get, list, act, delete,
artifact), and hear of ended jobs through ``gateway.ends.on_jobs_ended``.

`GET /` lists every dialect; /openapi.json merges their fragments into one description.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..jobs.states import JobState

# Every dialect the gateway speaks, in the order `GET /` lists them.
MODULES = ("modaclouds", "slots", "job_manager", "long_running", "workers_data", "tes")


@dataclass(frozen=True)
class Dialect:
    name: str
    # The seed design's number ("000" to "004"), or "tes".
    seed: str
    base: str
    docs: str
    # register(app, gateway): add this dialect's routes to the falcon app.
    register: Callable[[Any, Any], None]
    # Every core JobState to this dialect's word for it (checked complete by a test).
    states: Mapping[JobState, str] = field(default_factory=dict)
    # File name of this dialect's OpenAPI fragment, beside its module (None: described in the core file).
    openapi: str | None = None

    def index_entry(self) -> dict:
        return {"name": self.name, "seed": self.seed, "base": self.base, "docs": self.docs}

    def openapi_fragment(self) -> dict:
        if not self.openapi:
            return {}
        text = importlib.resources.files(__package__).joinpath(self.openapi).read_text(encoding="utf-8")
        return json.loads(text)


def submission_hook(gateway) -> Callable[[dict], None]:
    """What every door does after a submission: count it and wake the tracker."""
    def on_submitted(created: dict) -> None:
        gateway.metrics.submissions.inc(created.get("count", 1))
        gateway.tracker.wake()
    return on_submitted


def word_filter(states: Mapping[JobState, str], words: list[str], field_name: str,
                vocabulary: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A dialect's state words (a list filter) back to the core states they stand for.

    ``vocabulary`` names the dialect's words no core state maps to (they match no job, so
    the result may be empty: the caller answers an empty list)."""
    from ..errors import InvalidRequest

    known = list(dict.fromkeys([*states.values(), *vocabulary]))
    unknown = [w for w in words if w not in known]
    if unknown:
        raise InvalidRequest(f"unknown {field_name} {', '.join(unknown)}; the {field_name} words are {', '.join(known)}",
                             field=field_name)
    return tuple(state.value for state, word in states.items() if word in words)


def all_dialects() -> list[Dialect]:
    return [importlib.import_module(f"{__name__}.{name}").DIALECT for name in MODULES]


def openapi_description(dialects: list[Dialect]) -> dict:
    """The served description: the core file with every dialect's fragment merged in."""
    from ..api.docs import core_description

    return merged_openapi(core_description(), dialects)


def merged_openapi(core: dict, dialects: list[Dialect]) -> dict:
    """The core description with every dialect's paths and component schemas added.

    A path or schema name given twice is a programming error, refused at start-up."""
    merged = json.loads(json.dumps(core))
    components = merged.setdefault("components", {})
    for dialect in dialects:
        fragment = dialect.openapi_fragment()
        for path, item in fragment.get("paths", {}).items():
            if path in merged["paths"]:
                raise ValueError(f"dialect {dialect.name!r} describes {path} a second time")
            merged["paths"][path] = item
        for kind, entries in fragment.get("components", {}).items():
            target = components.setdefault(kind, {})
            for key, value in entries.items():
                if key in target and target[key] != value:
                    raise ValueError(f"dialect {dialect.name!r} redefines components.{kind}.{key}")
                target[key] = value
        for tag in fragment.get("tags", []):
            merged.setdefault("tags", []).append(tag)
    return merged
