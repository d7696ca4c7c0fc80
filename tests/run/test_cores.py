"""Builds on one machine say when together they ask for more cores than it has."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile

import pytest

from llmbuild.backend import Resources
from llmbuild.run import cores


@pytest.fixture
def other_build(tmp_path, monkeypatch):
    """A live process of another build holding every core of the machine (its claim as a
    build writes it), and the claims directory kept inside the test's tmp dir."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    root = cores.claims_dir()
    root.mkdir()
    held = os.cpu_count() or 1
    (root / f"{proc.pid}-1.json").write_text(
        json.dumps({"pid": proc.pid, "node": "stage:other", "cores": held, "store": "s"})
    )
    yield proc
    proc.kill()
    proc.wait()


def test_a_claim_of_every_core_makes_a_multithreaded_node_say_so(other_build):
    machine = os.cpu_count() or 1
    if machine < 2:
        pytest.skip("one core: a node computes with one thread, which shares well")
    said = cores.oversubscribed(Resources.machine())
    assert said is not None and f"computes with {machine} of them" in said
    assert f"(stage:other, pid {other_build.pid})" in said
    assert "parallelism.cpus_per_rank" in said
    assert cores.oversubscribed(Resources(cpus=1)) is None  # one thread shares a machine
    own = cores.claim("stage:mine", Resources.machine(), "s")  # this process's own claims
    try:  # never count against it
        assert [c["node"] for c in cores.others()] == ["stage:other"]
    finally:
        own.release()
    assert not own.path and len(list(cores.claims_dir().glob("*.json"))) == 1


def test_the_claim_of_a_build_that_is_gone_is_dropped(other_build):
    other_build.kill()
    other_build.wait()
    assert cores.oversubscribed(Resources.machine()) is None
    assert not list(cores.claims_dir().glob("*.json"))


def test_a_build_says_so_as_its_node_starts_and_leaves_no_claim(
    other_build, fixture_env, project, tmp_path
):
    from llmbuild.run.build import BuildOptions, PlainReporter, build
    from llmbuild.spec.load import load_spec
    from llmbuild.store.store import Store
    from tests.fixture_backend import fixture_registry

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: a training stage computes with one thread")
    out = io.StringIO()
    outcome = build(
        load_spec(project),
        Store(str(tmp_path / "store")),
        BuildOptions(executor="inline", live=False, until=("stage:pretrain",)),
        PlainReporter(out, interval=0.0),
        registry=fixture_registry(),
    )
    assert outcome.ok, out.getvalue()
    running = [line for line in out.getvalue().splitlines() if "running  stage:pretrain" in line]
    assert running and "another build on it computes with" in running[0], out.getvalue()
    assert "stage:other" in running[0]
    data = [line for line in out.getvalue().splitlines() if "running  source:" in line]
    assert data and all("another build" not in line for line in data)  # one thread each
    assert [p.name for p in cores.claims_dir().glob("*.json")] == [f"{other_build.pid}-1.json"]


def test_inline_refuses_a_rank_asking_for_more_cores_than_the_machine_has(tmp_path):
    from tests.backends.conftest import run_nodes
    from tests.backends.test_megatron import tiny_spec

    machine = os.cpu_count() or 1
    spec = tiny_spec(tmp_path, "gpt2", steps=2)
    over = (f"parallelism.cpus_per_rank={machine + 1}",)
    outcome = run_nodes(spec, tmp_path / "store", ("stage:pretrain",), over)
    stage = outcome.results["stage:pretrain"]
    assert stage.state == "failed", stage
    assert f"this machine has {machine} cores, and each rank of this node asks for " in stage.detail
    assert "Traceback" not in stage.detail
