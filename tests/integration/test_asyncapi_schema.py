"""The generated AsyncAPI documents are valid AsyncAPI 3.0.0, checked by the official JSON Schema.

The schema comes from the `@asyncapi/specs` package on the npm registry (`npm pack`, cached under
~/.cache/alpha-streaming); the AsyncAPI CLI validates with the same schemas (plus its own lint
rules, which `README.md` reports as passing too).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import unavailable
from tests.unit.test_asyncapi import builder_document, decorator_document

SPECS = "@asyncapi/specs@6.11.1"
CACHE = Path.home() / ".cache" / "alpha-streaming" / "asyncapi-specs-6.11.1"
SCHEMA = "package/schemas/3.0.0-without-$id.json"


@pytest.fixture(scope="module")
def asyncapi_3_schema() -> dict[str, Any]:
    target = CACHE / SCHEMA
    if not target.exists():
        npm = shutil.which("npm")
        if npm is None:
            unavailable("npm (to fetch the AsyncAPI JSON Schema from @asyncapi/specs)")
        CACHE.mkdir(parents=True, exist_ok=True)
        packed = subprocess.run(
            [str(npm), "pack", SPECS, "--silent"], cwd=CACHE, capture_output=True, text=True, timeout=120
        )
        if packed.returncode != 0:
            unavailable(f"the npm registry ({SPECS}): {packed.stderr.strip()[:300]}")
        with tarfile.open(CACHE / packed.stdout.strip().splitlines()[-1]) as archive:
            archive.extract(SCHEMA, CACHE, filter="data")
    schema: dict[str, Any] = json.loads(target.read_text())
    return schema


def problems(schema: dict[str, Any], document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_a_decorator_apps_document_is_valid_asyncapi_3(asyncapi_3_schema: dict[str, Any]) -> None:
    document = decorator_document()
    assert document["asyncapi"] == "3.0.0"
    assert problems(asyncapi_3_schema, document) == []


def test_a_builder_services_document_is_valid_asyncapi_3(asyncapi_3_schema: dict[str, Any]) -> None:
    document = builder_document()
    assert problems(asyncapi_3_schema, document) == []


def test_the_check_can_fail(asyncapi_3_schema: dict[str, Any]) -> None:
    document = decorator_document()
    del document["info"]["title"]
    document["channels"]["paper.orders.filled:OnFill"] = {"address": 42}
    found = problems(asyncapi_3_schema, document)
    assert any("title" in p for p in found), found
    assert len(found) >= 2, found
