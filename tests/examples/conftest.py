"""Examples are built from a copy, so the checkout's own store is never touched."""

from __future__ import annotations

import re
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
    # An example may read a sibling's files ("../shakespeare/data/..."): copied beside it.
    for spec in example.glob("spec*.toml"):
        for sibling in re.findall(r"\.\./([\w-]+)/", spec.read_text()):
            if not (tmp_path / sibling).exists() and (REPO / "examples" / sibling).is_dir():
                shutil.copytree(REPO / "examples" / sibling, tmp_path / sibling, ignore=skip)
    if (example / "make_checkpoint.py").is_file():
        subprocess.run([sys.executable, str(example / "make_checkpoint.py")], check=True,
                       capture_output=True)  # fmt: skip
    return example


def example_store(name: str, factory: pytest.TempPathFactory, seed: str | None = None) -> Path:
    """Where a test builds ``examples/<name>``: the suite's store; or, given ``seed``, the
    store of the examples that share ``examples/<seed>``'s nodes, beside it (kept between
    runs like it), begun as a copy of ``examples/<seed>/.llmbuild`` when the README's build
    made every node of that example there: what they share (the main example's model) is
    then read, not trained again, and the checkout's store is never written."""
    from llmbuild.plan import plan_spec
    from llmbuild.spec.load import load_spec
    from llmbuild.store.store import Store

    if seed is None:
        return suite_store(factory)
    store = suite_store(factory) / "examples" / seed
    own = REPO / "examples" / seed / ".llmbuild"
    if not store.exists() and own.is_dir():
        planned = plan_spec(load_spec(REPO / "examples" / seed / "spec.toml"), Store(str(own)))
        if planned.plan.count("cached") == len(planned.plan.nodes):  # finished, not running
            partial = store.with_name(f".{seed}.copying")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(own, partial, ignore=shutil.ignore_patterns("leases", "running"))
            partial.rename(store)
    return store


def build_example(
    name: str, tmp_path: Path, factory: pytest.TempPathFactory, seed: str | None = None
) -> BuildOutcome:
    """Every node of ``examples/<name>/spec.toml``, built from a copy of the example into
    ``example_store(name, factory, seed)``."""
    example = copy_example(name, tmp_path)
    outcome = run_nodes(example / "spec.toml", example_store(name, factory, seed))
    assert outcome.ok, outcome.log
    return outcome
