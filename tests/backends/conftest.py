"""Builds of real backend nodes, inline, into a temp store."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmbuild.run.build import BuildOptions, BuildOutcome, PlainReporter, build
from llmbuild.spec.load import load_spec
from llmbuild.store.store import CHECKPOINT_MARKER, Store
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
    # A tiny model's next checkpoint can follow within ~50 ms: look often, kill at once.
    deadline, marker = time.monotonic() + 600, None
    while time.monotonic() < deadline and proc.poll() is None:
        marker = checkpoint_marker(store, node)
        if marker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the build's own process group first
            break
        time.sleep(0.005)
    for pid in _session(proc.pid):  # Ray's processes lead process groups of their own
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert marker is not None, "no checkpoint appeared"
    return marker


def checkpoint_marker(store: Path, node: str) -> Path | None:
    """The marker of ``node``'s resumable checkpoint in ``store``, once there is one (a
    work dir is named by key; its log names the node it builds)."""
    for marker in store.glob(f"work/*/{CHECKPOINT_MARKER}"):
        try:
            log = (marker.parent / "node.log").read_text()
        except OSError:
            continue
        if f"building {node} (" in log:
            return marker
    return None


def processes(part: str) -> Iterator[tuple[int, bytes]]:
    """(id, ``/proc/<id>/<part>``) of each process on this machine that can be read."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                yield int(entry), Path(f"/proc/{entry}/{part}").read_bytes()
            except OSError:
                continue


def _session(sid: int) -> list[int]:
    """The processes of session ``sid`` (what a process started with
    ``start_new_session`` started in turn), the session leader first."""
    pids = [sid]
    for pid, stat in processes("stat"):
        fields = stat[stat.rindex(b")") + 2 :].split()  # state, ppid, pgrp, session, ...
        if pid != sid and int(fields[3]) == sid:
            pids.append(pid)
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
        return self.outcome.results[node].record.metrics


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
