"""Node kinds are open: a package outside llmbuild adds a stage kind with a reference field
and an export format, and they validate, plan, build and appear in the schema and the
spec reference, with nothing of llmbuild edited."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

from llmbuild.errors import SpecError
from llmbuild.plan import StatCache, plan_spec
from llmbuild.registry import Registry
from llmbuild.run.build import BuildOptions, PlainReporter, build
from llmbuild.spec.load import load_spec
from llmbuild.spec.schema import spec_reference, spec_schema_text
from llmbuild.store.store import Store
from tests import plugin_package
from tests.conftest import FULL_SPEC, REPO, write_project
from tests.fixture_backend import fixture_registry
from tests.run.helpers import counts

PLUGIN_SPEC = (
    FULL_SPEC
    + """
[[stage]]
name = "merged"
kind = "merge"
from = "sft"
other = "dpo"
weight = 0.25

[[export]]
format = "manifest"
stage = "merged"
"""
)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    site = plugin_package.install(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site
    plugin_package.uninstall()


def _registry() -> Registry:
    """The real registry, but the built-in backends swapped for the fixture backend (the
    plugin's own backends run as they are)."""
    return fixture_registry(group="llmbuild.backends")


def test_a_plugin_kind_validates_plans_and_builds(plugin, fixture_env, tmp_path):
    registry = _registry()
    spec = write_project(tmp_path, PLUGIN_SPEC)
    resolved = load_spec(spec, registry=registry)
    planned = plan_spec(resolved, cache=StatCache(), registry=registry)
    merged = planned.graph["stage:merged"]
    assert merged.backend == "merger"
    assert merged.inputs == {"tokenizer": "tokenizer", "from": "stage:sft", "other": "stage:dpo"}
    assert planned.graph["export:manifest@merged"].inputs["model"] == "stage:merged"
    outcome = build(
        resolved,
        Store(str(tmp_path / "store")),
        BuildOptions(executor="inline", live=False),
        PlainReporter(open(os.devnull, "w"), interval=0),
        registry=registry,
    )
    assert outcome.ok, {n: r.detail for n, r in outcome.results.items() if r.detail}
    assert outcome.results["export:manifest@merged"].record.metrics == {"files": 1}
    parts, weight = json.loads(
        (Store(str(tmp_path / "store")).local_dir(outcome.results["stage:merged"].record))
        .joinpath("out.txt")
        .read_text()
    )
    assert set(parts) == {"from", "other"} and weight == 0.25
    assert "stage:merged" not in counts()  # its own backend ran, not the fixture's

    # Its reference is an edge: pointing it elsewhere changes its key and what follows.
    other = plan_spec(
        load_spec(spec, ["stage.merged.other=pretrain"], registry=registry),
        cache=StatCache(),
        registry=registry,
    )
    moved = {n for n, k in other.keys.items() if planned.keys[n].key != k.key}
    assert moved == {"stage:merged", "export:manifest@merged"}


def test_a_plugin_reference_is_checked_and_cycles_are_found(plugin, tmp_path):
    registry = _registry()
    spec = write_project(tmp_path, PLUGIN_SPEC.replace('other = "dpo"', 'other = "dop"'))
    with pytest.raises(SpecError) as info:
        load_spec(spec, registry=registry)
    assert [p.message for p in info.value.problems] == ["no stage named 'dop'; did you mean 'dpo'?"]
    assert info.value.problems[0].key == "stage[3].other"
    looped = PLUGIN_SPEC.replace('other = "dpo"', 'other = "merged2"') + (
        '[[stage]]\nname = "merged2"\nkind = "merge"\nfrom = "pretrain"\nother = "merged"\n'
    )
    with pytest.raises(SpecError, match="stages form a cycle: merged -> merged2 -> merged"):
        load_spec(write_project(tmp_path, looped), registry=registry)


def test_plugin_kinds_are_in_the_schema_and_the_reference(plugin):
    registry = _registry()
    schema = json.loads(spec_schema_text(registry))
    stage_kinds = schema["properties"]["stage"]["items"]["discriminator"]["mapping"]
    assert "merge" in stage_kinds and "pretrain" in stage_kinds
    export_formats = schema["properties"]["export"]["items"]["discriminator"]["mapping"]
    assert "manifest" in export_formats
    reference = spec_reference(registry)
    assert '### `[[stage]]` kind = "merge"' in reference
    assert "| `other` | name | required | The second stage. *Names stages" in reference
    assert '### `[[export]]` format = "manifest"' in reference


def test_plugin_kinds_through_the_command_line(plugin, tmp_path):
    spec = write_project(tmp_path, PLUGIN_SPEC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), str(REPO)])}
    run = [sys.executable, "-m", "llmbuild"]
    checked = subprocess.run([*run, "validate", str(spec)], env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    plan = subprocess.run([*run, "plan", str(spec)], env=env, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    assert "stage:merged" in plan.stdout and "export:manifest@merged" in plan.stdout
    schema = subprocess.run([*run, "schema"], env=env, capture_output=True, text=True)
    assert '"merge"' in schema.stdout
