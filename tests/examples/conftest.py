"""Examples are built from a copy, so the checkout's own store is never touched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmbuild.run.build import BuildOutcome
from tests.backends.conftest import run_nodes
from tests.conftest import REPO, suite_store


def copy_example(name: str, tmp_path: Path) -> Path:
    """A copy of ``examples/<name>`` (without its store or generated checkpoints), with
    what the example's README says to run first (``make_checkpoint.py``) done."""
    import subprocess
    import sys

    example = tmp_path / name
    skip = shutil.ignore_patterns(".llmbuild", "checkpoints")
    shutil.copytree(REPO / "examples" / name, example, ignore=skip)
    if (example / "make_checkpoint.py").is_file():
        subprocess.run([sys.executable, str(example / "make_checkpoint.py")], check=True,
                       capture_output=True)  # fmt: skip
    return example


def build_example(name: str, tmp_path: Path, factory: pytest.TempPathFactory) -> BuildOutcome:
    """Every node of ``examples/<name>/spec.toml``, built from a copy into the suite's store."""
    example = copy_example(name, tmp_path)
    outcome = run_nodes(example / "spec.toml", suite_store(factory))
    assert outcome.ok, outcome.log
    return outcome
