"""The Ray executor: a local cluster on 127.0.0.1, concurrent nodes, and a 2-rank
TorchTrainer node whose ranks all-reduce over gloo."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from tests.conftest import REPO, artifact_dirs
from tests.fixture_backend import set_control, timings
from tests.run.helpers import counts, fixture_build

ray = pytest.importorskip("ray")


@pytest.fixture
def ray_env(fixture_env, monkeypatch):
    # Workers import the fixture backend from this checkout.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_fixture_pipeline_on_local_ray(project, ray_env, tmp_path):
    set_control(sleep={"source:books": 2, "source:chat": 2})
    outcome = fixture_build(project, tmp_path / "store", executor="ray")
    assert outcome.ok, {n: r.detail for n, r in outcome.results.items() if r.detail}
    assert sorted(counts().values()) == [1] * 14
    t = timings()
    books, chat = t["source:books"], t["source:chat"]
    assert books[2] != os.getpid()  # ran in a Ray worker, not here
    assert books[0] < chat[1] and chat[0] < books[1]  # independent nodes overlapped
    assert not ray.is_initialized()  # the local cluster it started is gone
    # Fully cached: Ray is not started at all.
    again = fixture_build(project, tmp_path / "store", executor="ray")
    assert again.count("cached") == 14 and not ray.is_initialized()


def _total(values: list[int]) -> int:
    return sum(values)


def _environment(names: list[str]) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def test_a_local_cluster_starts_what_a_build_uses_and_stops_every_process_it_started(ray_env):
    from ray._private import ray_constants, worker
    from ray._private.node import Node

    from llmbuild.run.executors import (
        QUIET_CLUSTER_ENV,
        UNUSED_HEAD_PROCESSES,
        start_local_ray,
        stop_local_ray,
    )

    start_local_ray(num_cpus=1)
    started = worker._global_node.all_processes
    unused = {
        ray_constants.PROCESS_TYPE_DASHBOARD,
        ray_constants.PROCESS_TYPE_MONITOR,
        ray_constants.PROCESS_TYPE_LOG_MONITOR,
    }
    assert ray_constants.PROCESS_TYPE_RAYLET in started and not unused & set(started)
    assert ray.get(ray.remote(_total).remote([3, 4])) == 7
    # its workers send Ray no task events, which nothing of a build reads
    assert ray.get(ray.remote(_environment).remote(list(QUIET_CLUSTER_ENV))) == QUIET_CLUSTER_ENV
    assert [getattr(Node, name).__name__ for name in UNUSED_HEAD_PROCESSES] == list(
        UNUSED_HEAD_PROCESSES
    )  # Ray's own methods again once the cluster is up
    processes = [info.process for infos in started.values() for info in infos]
    stop_local_ray()
    assert not ray.is_initialized()
    assert [p.args[:2] for p in processes if p.poll() is None] == []


def test_failure_under_ray_is_reported(project, ray_env, tmp_path):
    set_control(fail=["tokenize:chat"])
    outcome = fixture_build(project, tmp_path / "store", executor="ray", only=("sft",))
    assert outcome.results["tokenize:chat"].state == "failed"
    assert "told to fail" in outcome.results["tokenize:chat"].detail
    assert outcome.results["stage:sft"].state == "skipped"


def test_two_rank_torchtrainer_node_all_reduces(project, ray_env, tmp_path):
    pytest.importorskip("torch")
    outcome = fixture_build(
        project, tmp_path / "store", ["parallelism.data=2"], executor="ray", only=("pretrain",)
    )
    assert outcome.ok, {n: r.detail for n, r in outcome.results.items() if r.detail}
    record = outcome.results["stage:pretrain"].record
    assert record.metrics["allreduce_sum"] == 3.0  # ranks 0 and 1 contributed 1 + 2
    (art,) = artifact_dirs(tmp_path / "store", "stage:pretrain")
    assert json.loads((art / "allreduce.json").read_text()) == {"sum": 3.0, "world_size": 2}


def test_a_ranks_mistake_is_said_as_the_rank_said_it(project, ray_env, tmp_path):
    """A UserError raised in a rank reaches the build as its message, not inside Ray
    Train's wrapping nor after a class name."""
    pytest.importorskip("torch")
    set_control(rank_user_error=["stage:pretrain"])
    outcome = fixture_build(
        project, tmp_path / "store", ["parallelism.data=2"], executor="ray", only=("pretrain",)
    )
    detail = outcome.results["stage:pretrain"].detail
    assert outcome.results["stage:pretrain"].state == "failed"
    assert detail.startswith("rank 1 was told the user made a mistake"), detail
    assert "Training failed" not in detail and "Traceback" not in detail, detail


def test_more_ranks_than_cores_run_on_the_local_cluster(project, ray_env, tmp_path, monkeypatch):
    """A layout of more ranks than this machine has cores (cpus_per_rank unset) runs on
    the cluster a build starts here, a thread per rank, rather than waiting for cores
    that will not come; a real cluster is not resized."""
    pytest.importorskip("torch")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # whatever the machine: 4 ranks > 2
    outcome = fixture_build(
        project,
        tmp_path / "store",
        ["parallelism.data=4", "parallelism.micro_batch=1"],
        executor="ray",
        only=("pretrain",),
    )
    assert outcome.ok, {n: r.detail for n, r in outcome.results.items() if r.detail}
    record = outcome.results["stage:pretrain"].record
    assert record.metrics["allreduce_sum"] == 10.0  # ranks 0 to 3 contributed 1 + 2 + 3 + 4


def test_a_cluster_that_goes_away_ends_the_build_at_once_and_says_so(project, ray_env, tmp_path):
    """The head of the cluster (its GCS) killed while a node runs: the build stops within
    seconds saying what happened and what the next build does, and is recorded as
    interrupted; Ray alone would wait a minute, then end the process without a word."""
    import signal
    import threading
    import time

    from llmbuild.run.executors import ClusterLost
    from llmbuild.store.store import Store

    set_control(sleep={"source:books": 60})
    killed = []

    def kill_the_head() -> None:
        from ray._private import ray_constants, worker

        while not killed:
            node = worker._global_node
            gcs = node.all_processes.get(ray_constants.PROCESS_TYPE_GCS_SERVER) if node else None
            if gcs and (tmp_path / "store" / "work").is_dir():
                time.sleep(3)  # the first node is running
                os.kill(gcs[0].process.pid, signal.SIGKILL)
                killed.append(time.monotonic())
            time.sleep(0.2)

    threading.Thread(target=kill_the_head, daemon=True).start()
    with pytest.raises(ClusterLost) as e:
        fixture_build(project, tmp_path / "store", executor="ray", only=("sft",))
    assert killed and time.monotonic() - killed[0] < 20
    assert "the local Ray cluster went away: its head no longer answers" in str(e.value)
    assert "the next build resumes" in str(e.value)
    (recorded,) = Store(str(tmp_path / "store")).builds()
    assert recorded["interrupted"] and not recorded["ok"]
    assert recorded["nodes"]["source:books"]["state"] == "interrupted"
    assert not ray.is_initialized()


def test_local_ray_binds_loopback(ray_env):
    from llmbuild.run.executors import RayExecutor

    executor = RayExecutor()
    executor.start()
    try:
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
    finally:
        executor.shutdown()


def test_ray_that_cannot_start_is_a_plain_error(project, ray_env, tmp_path, monkeypatch, capsys):
    """Ray failing to start (a machine under heavy load, a cluster that is not there) is
    said in one line with what to do, by build and reproduce alike, and builds nothing."""
    from llmbuild.cli import main

    store = tmp_path / "store"
    assert fixture_build(project, store).ok  # recorded, to reproduce
    (spec_hash,) = [p.stem for p in (store / "builds").glob("*.json")]

    def refuse(*args, **kwargs):
        raise RuntimeError("Failed to start the GCS server")

    monkeypatch.setattr(ray, "init", refuse)
    temp = tmp_path / "temp"  # where reproduce makes its scratch store
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    for argv in (["build", str(project), "--store", str(tmp_path / "other")],
                 ["reproduce", spec_hash, "--store", str(store)]):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "could not start a local Ray cluster: RuntimeError: Failed to start the GCS" in err
        assert "--executor inline" in err and "Traceback" not in err
    assert not list((tmp_path / "other" / "artifacts").glob("*"))
    assert not list(temp.iterdir())  # nor a scratch store left by reproduce


def test_progress_of_ray_workers_reaches_the_driver(project, ray_env, tmp_path):
    """Workers publish their nodes' progress in the cluster's key-value store; the driver
    shows it as it comes and leaves none behind."""
    import io

    from llmbuild.run.build import BuildOptions, PlainReporter, build
    from llmbuild.spec.load import load_spec
    from llmbuild.store.store import Store
    from tests.fixture_backend import fixture_registry

    set_control(sleep={"source:books": 1.5})
    out = io.StringIO()
    outcome = build(
        load_spec(project, ()),
        Store(str(tmp_path / "store")),
        BuildOptions(executor="ray", live=False, only=("source:books",)),
        PlainReporter(out, interval=0.0),
        registry=fixture_registry(None),
    )
    assert outcome.ok
    shown = [line for line in out.getvalue().splitlines() if "source:books" in line]
    ticks = [line for line in shown if "ticks " in line]
    done = [int(t.split("ticks ")[1].split("/")[0]) for t in ticks]
    assert len(done) >= 2 and done == sorted(done), shown  # while the node ran, in order
    assert done[-1] == 15, shown  # and its last update
    assert not ray.is_initialized()  # and the cluster, with its store, is gone


def test_a_node_waiting_for_cores_is_queued_until_a_worker_takes_it(
    project, ray_env, tmp_path, monkeypatch
):
    """On a one-core cluster two one-core nodes cannot run at once: the second is shown
    queued, and running only once the first is built and a worker takes it."""
    import io

    from llmbuild.run import executors
    from llmbuild.run.build import BuildOptions, PlainReporter, build
    from llmbuild.spec.load import load_spec
    from llmbuild.store.store import Store
    from tests.fixture_backend import fixture_registry

    start = executors.start_local_ray
    monkeypatch.setattr(executors, "start_local_ray", lambda num_cpus=None: start(1))
    set_control(sleep={"source:books": 1.5, "source:chat": 1.5})
    out = io.StringIO()
    outcome = build(
        load_spec(project, ()),
        Store(str(tmp_path / "store")),
        BuildOptions(executor="ray", live=False, only=("source:books", "source:chat")),
        PlainReporter(out, interval=0.0),
        registry=fixture_registry(None),
    )
    assert outcome.ok, out.getvalue()
    said = [line.split()[1:3] for line in out.getvalue().splitlines()]
    said = [s for s in said if s[0] in ("queued", "running", "built")]
    for node in ("source:books", "source:chat"):
        states = [state for state, name in said if name == node]
        assert states == ["queued", "running", "built"], out.getvalue()
    first, second = sorted(
        ("source:books", "source:chat"), key=lambda n: said.index(["running", n])
    )
    assert said.index(["running", second]) > said.index(["built", first]), out.getvalue()
