"""Builds of real backend nodes, inline, into a temp store."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmbuild.run.build import BuildOptions, BuildOutcome, PlainReporter, build
from llmbuild.spec.load import load_spec
from llmbuild.store.store import Store
from tests.conftest import REPO, suite_store


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


def kill_after_checkpoint(
    spec: Path, store: Path, node: str, executor: str = "inline", overrides=()
) -> Path:
    """Build up to ``node`` in a subprocess and SIGKILL it once the node's first
    checkpoint is written; the checkpoint marker's path. The subprocess leads a session of
    its own, and every process in it is killed: under ``executor = "ray"`` that is the
    local Ray cluster it started, the ranks included, all at once."""
    sets = [arg for override in overrides for arg in ("--set", override)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbuild", "build", str(spec), "--store", str(store),
         "--executor", executor, "--plain", "--until", node, *sets],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    pattern = f"work/{node.replace(':', '_')}-*/checkpoint.json"
    deadline, marker = time.monotonic() + 600, None
    while time.monotonic() < deadline and proc.poll() is None:
        marker = next(iter(store.glob(pattern)), None)
        if marker is not None:
            break  # kill at once, before the next checkpoint
        time.sleep(0.05)
    for pid in _session(proc.pid):  # Ray's processes lead process groups of their own
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert marker is not None, "no checkpoint appeared"
    return marker


def _session(sid: int) -> list[int]:
    """The processes of session ``sid`` (what a process started with
    ``start_new_session`` started in turn), the session leader first."""
    pids = [sid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == sid:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


@dataclass
class Built:
    """A finished build of a test spec."""

    style: str
    spec: Path
    store: Path
    outcome: BuildOutcome

    def dir(self, node: str) -> Path:
        return artifact(self.outcome, self.store, node)

    def metrics(self, node: str) -> dict:
        return self.outcome.results[node].record["metrics"]


def builds_by_style(tmp_path_factory, write_spec) -> Callable[[str], Built]:
    """``get(style)``: the build of ``write_spec(root, style)``, made once per style."""
    cache: dict[str, Built] = {}

    def get(style: str) -> Built:
        if style not in cache:
            root, store = tmp_path_factory.mktemp(style), suite_store(tmp_path_factory)
            spec = write_spec(root, style)
            outcome = run_nodes(spec, store)
            assert outcome.ok, outcome.log
            cache[style] = Built(style, spec, store, outcome)
        return cache[style]

    return get
