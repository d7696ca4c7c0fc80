"""Builds of real backend nodes, inline, into a temp store."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from llmbuild.run.build import BuildOptions, BuildOutcome, PlainReporter, build
from llmbuild.spec.load import load_spec
from llmbuild.store.store import Store


def run_nodes(spec: Path, store: Path, until: tuple[str, ...] = (), overrides=()) -> BuildOutcome:
    log = io.StringIO()
    outcome = build(
        load_spec(spec, overrides),
        Store(str(store)),
        BuildOptions(executor="inline", live=False, until=until),
        PlainReporter(log, interval=0),
    )
    outcome.log = log.getvalue()  # type: ignore[attr-defined]
    return outcome


def artifact(outcome: BuildOutcome, store: Path, name: str) -> Path:
    rec = Store(str(store)).resolve(outcome.results[name].record)
    return Store(str(store)).local_dir(rec)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return tmp_path
