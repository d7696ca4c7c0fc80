"""The published JSON Schema (what editors check specs against) accepts every shipped spec
and preset as written, and rejects what the loader rejects."""

from __future__ import annotations

import pytest

from llmbuild.spec.compose import tomllib
from llmbuild.spec.schema import editor_schema
from tests.conftest import REPO

jsonschema = pytest.importorskip("jsonschema")

SPECS = sorted((REPO / "examples").glob("*/spec.toml")) + sorted(
    (REPO / "llmbuild" / "presets").glob("*.toml")
)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_spec_passes_the_editor_schema(path):
    spec = tomllib.loads(path.read_text())
    errors = list(jsonschema.Draft202012Validator(editor_schema()).iter_errors(spec))
    assert not errors, [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def test_a_path_may_be_one_string_or_a_list_but_not_empty():
    validator = jsonschema.Draft202012Validator(editor_schema())
    source = editor_schema()["$defs"]["Source"]["properties"]["path"]
    check = jsonschema.Draft202012Validator({**source, "$defs": {}})
    assert check.is_valid("data/a.txt") and check.is_valid(["a.txt", "b/*.txt"])
    assert not check.is_valid([]) and not check.is_valid(3)
    assert not validator.is_valid({"model": {"name": "x"}, "unknown_table": {}})
    assert validator.is_valid({"extends": ["@gpt2-tiny"], "model": {"seed": 3}})
    assert not validator.is_valid({"eval": [{"name": "ppl", "stages": ["a"]}]})  # no kind
