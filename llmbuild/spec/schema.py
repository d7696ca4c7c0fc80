"""The JSON Schema of specs, generated from the pydantic models (for editors via #:schema)."""

from __future__ import annotations

import json
from typing import Any

from llmbuild.spec.root import Spec

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


def spec_schema() -> dict[str, Any]:
    schema = Spec.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = SCHEMA_URI
    schema["title"] = "llmbuild model spec"
    return schema


def spec_schema_text() -> str:
    return json.dumps(spec_schema(), indent=2, sort_keys=False) + "\n"
