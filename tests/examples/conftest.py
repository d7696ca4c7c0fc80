"""Examples are built from a copy, so the checkout's own store is never touched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmbuild.run.build import BuildOutcome
from tests.backends.conftest import run_nodes
from tests.conftest import REPO, suite_store


def build_example(name: str, tmp_path: Path, factory: pytest.TempPathFactory) -> BuildOutcome:
    """Every node of ``examples/<name>/spec.toml``, built from a copy into the suite's store."""
    example = tmp_path / name
    shutil.copytree(REPO / "examples" / name, example, ignore=shutil.ignore_patterns(".llmbuild"))
    outcome = run_nodes(example / "spec.toml", suite_store(factory))
    assert outcome.ok, outcome.log
    return outcome
