"""Answers checked against the TES 1.1 schemas shipped beside this file.

``strict`` also refuses any key a TES schema does not define (py-tes refuses them too); the
GA4GH service-info schemas stay open, as their spec has them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema

SCHEMA_FILE = Path(__file__).with_name("task_execution_service-1.1.0.json")
OPEN_SCHEMAS = {"Service", "ServiceType", "Organization", "tesServiceInfo", "tesServiceType"}


def _document(strict: bool) -> dict:
    doc = json.loads(SCHEMA_FILE.read_text())
    if strict:
        for name, schema in doc["components"]["schemas"].items():
            if name not in OPEN_SCHEMAS and "properties" in schema:
                schema.setdefault("additionalProperties", False)
    return doc


_DOCS = {True: _document(True), False: _document(False)}


def check(instance, schema_name: str, strict: bool = True, minimal: bool = False) -> None:
    """Raise jsonschema.ValidationError unless ``instance`` is a valid ``schema_name``.

    ``minimal``: tasks in the MINIMAL view, which the spec reduces to id and state (so the
    schema's required executors are not there)."""
    doc = copy.deepcopy(_DOCS[strict])
    if minimal:
        doc["components"]["schemas"]["tesTask"].pop("required")
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker()).validate(instance)
