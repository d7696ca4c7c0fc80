"""Every example under examples/ validates and plans through the command line.

Spec files are found by glob, so an example added later is tested without editing this
file; an example directory without a spec file fails rather than being skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmbuild.cli import main
from tests.conftest import REPO
from tests.examples.conftest import copy_example

EXAMPLES = REPO / "examples"


def example_specs() -> list[Path]:
    return sorted(EXAMPLES.glob("*/spec*.toml"))


def test_every_example_directory_has_a_spec():
    dirs = sorted(d.name for d in EXAMPLES.iterdir() if d.is_dir() and not d.name.startswith("."))
    with_spec = sorted({p.parent.name for p in example_specs()})
    assert dirs and dirs == with_spec


@pytest.mark.parametrize("spec", example_specs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_validates_and_plans(spec, tmp_path, capsys):
    spec = copy_example(spec.parent.name, tmp_path) / spec.name
    capsys.readouterr()
    assert main(["validate", str(spec)]) == 0
    assert ": ok (" in capsys.readouterr().out
    store = tmp_path / "store"  # an empty store: every node is to build
    assert main(["plan", str(spec), "--store", str(store), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    names = [n["name"] for n in plan["nodes"]]
    assert len(names) == len(set(names)) and len(plan["spec_hash"]) == 64
    assert any(n.startswith("source:") for n in names)
    assert any(n.startswith("stage:") for n in names)
    assert {n["status"] for n in plan["nodes"]} == {"build"}
    assert plan["summary"] == f"{len(names)} nodes, 0 cached, {len(names)} to build"
    assert main(["plan", str(spec), "--store", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"spec {plan['spec_hash'][:12]}  {plan['spec']}"
    assert lines[-1] == plan["summary"] and len(lines) == len(names) + 2
