"""Examples are built from a copy, so the checkout's own store is never touched."""

from __future__ import annotations

import shutil
from pathlib import Path

from llmbuild.run.build import BuildOutcome
from tests.backends.conftest import run_nodes
from tests.conftest import REPO


def build_example(name: str, tmp_path: Path) -> BuildOutcome:
    """Every node of ``examples/<name>/spec.toml``, built from a copy into a temp store."""
    example = tmp_path / name
    shutil.copytree(REPO / "examples" / name, example, ignore=shutil.ignore_patterns(".llmbuild"))
    outcome = run_nodes(example / "spec.toml", tmp_path / "store")
    assert outcome.ok, outcome.log
    return outcome
