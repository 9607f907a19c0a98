"""The published records (build.json, validation.json, boot.json, measurements.json) against the
JSON Schemas shipped in the package: the schemas are valid, strict, and name every key the code
writes.  The records themselves come from the real producers in test_validate_checks,
test_boot and test_measure; the real build's are checked in tests/integration/test_build.py."""

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from imagebuilder.build import publish
from imagebuilder.schemas import RECORDS, SCHEMA_VERSION, schema


@pytest.mark.parametrize("record", RECORDS)
def test_each_schema_is_valid_and_pins_the_schema_version(record):
    Draft202012Validator.check_schema(schema(record))
    assert schema(record)["properties"]["schema_version"] == {"const": SCHEMA_VERSION}
    assert "schema_version" in schema(record)["required"]
    assert schema(record)["additionalProperties"] is False


def test_the_schemas_ship_in_the_package():
    shipped = {path.name for path in (Path(publish.__file__).parents[1] / "schemas").iterdir()}
    assert {f"{record}.schema.json" for record in RECORDS} <= shipped


def test_relocation_names_published_paths_never_staging_ones(tmp_path):
    staging = tmp_path / ".out.staging-abc123"
    final = publish.Relocation({staging / "publish": str(tmp_path / "out"), staging: "<staging>",
                                staging / "description": str(tmp_path / "out" / "description")})
    record = {"image": str(staging / "publish" / "img.qcow2"), "ok": True, "n": 3,
              "command": ["--description", str(staging / "description"),
                          "--target-dir", str(staging / "kiwi"),
                          "--description", f"{staging}/description-incremental"]}
    assert final(record) == {"image": str(tmp_path / "out" / "img.qcow2"), "ok": True, "n": 3,
                             "command": ["--description", str(tmp_path / "out" / "description"),
                                         "--target-dir", "<staging>/kiwi",
                                         "--description", "<staging>/description-incremental"]}
    assert ".staging-" not in json.dumps(final(record))
