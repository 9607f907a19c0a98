"""JSON Schemas of the records tdx-image publishes (build.json, validation.json, boot.json,
measurements.json).  Each record carries ``schema_version``; a change that breaks a reader
raises it, together with the schema's ``const``."""

from __future__ import annotations

import json
from importlib import resources

SCHEMA_VERSION = 1
RECORDS = ("build", "validation", "boot", "measurements")


def schema(record: str) -> dict:
    """The JSON Schema of ``record`` (one of RECORDS), as shipped in the package."""
    return json.loads(resources.files(__name__).joinpath(f"{record}.schema.json").read_text())
