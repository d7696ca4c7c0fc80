"""A build on a Ray cluster of two nodes (two raylets on this machine, loopback only):
a ``data = 2`` stage puts one rank on each; when one node goes away mid-stage the stage
fails, named, instead of waiting for it; a build on what is left says the cluster cannot
hold the ranks; once a node is back the stage resumes from its checkpoint, and an eval
takes the cores of one of the cluster's machines; a lone rank larger than any of them
fails at once."""

from __future__ import annotations

import io
import threading
import time

import pytest

from llmbuild.run.build import BuildOptions, PlainReporter, build
from llmbuild.spec.load import load_spec
from llmbuild.store.store import Store
from tests.backends.conftest import checkpoint_marker
from tests.backends.test_megatron import tiny_spec
from tests.conftest import REPO

ray = pytest.importorskip("ray")
DATA = ["parallelism.data=2", "parallelism.micro_batch=2"]


@pytest.fixture
def cluster(monkeypatch):
    """A head node and a second node of one CPU each."""
    from ray.cluster_utils import Cluster

    from llmbuild.run.ranks import local_ray_env

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    # Ray Train's wait for ranks that cannot be placed (60 s by default), shortened.
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "20")
    local_ray_env()
    one = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    c = Cluster(initialize_head=True, head_node_args={**one, "include_dashboard": False})
    c.add_node(**one)
    yield c, one
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def _build(spec, store, address, until=("stage:pretrain",), overrides=DATA):
    log = io.StringIO()
    try:
        outcome = build(
            load_spec(spec, overrides),
            Store(str(store)),
            BuildOptions(executor="ray", ray_address=address, live=False, until=until),
            PlainReporter(log, interval=0),
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return outcome, log.getvalue()


def test_a_node_lost_mid_stage_fails_it_named_and_it_resumes_on_a_new_node(cluster, tmp_path):
    c, one = cluster
    ppl = '[[eval]]\nname = "ppl"\nkind = "perplexity"\nstages = ["pretrain"]\n'
    spec, store = tiny_spec(tmp_path, steps=200, extra=ppl), tmp_path / "store"
    second = c.list_all_nodes()[1]

    def take_the_second_node_away() -> None:
        deadline = time.monotonic() + 600
        while checkpoint_marker(store, "stage:pretrain") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        c.remove_node(second)

    threading.Thread(target=take_the_second_node_away, daemon=True).start()
    began = time.monotonic()
    lost, _ = _build(spec, store, c.address)
    assert time.monotonic() - began < 300  # not waiting for the node to come back
    failed = lost.results["stage:pretrain"]
    assert failed.state == "failed"
    assert "the Ray cluster cannot hold this node's ranks, 2 x (1 cpu)" in failed.detail
    assert "1 live node(s) have 1 CPUs" in failed.detail and "Traceback" not in failed.detail
    assert "the checkpoint the stage wrote at step " in failed.detail  # it had written one
    # On what is left: said at once, without starting the ranks.
    began = time.monotonic()
    short, _ = _build(spec, store, c.address)
    assert time.monotonic() - began < 60
    assert "cannot hold this node's ranks" in short.results["stage:pretrain"].detail
    # A node again: the stage resumes from the checkpoint written before the loss.
    c.add_node(**one)
    back, log = _build(spec, store, c.address, until=("eval:ppl@pretrain",))
    assert back.ok, {n: r.detail for n, r in back.results.items() if r.detail}
    assert "stage:pretrain  resume from step" in log
    assert back.results["stage:pretrain"].record.metrics["steps"] == 200
    # An eval takes a whole machine: here one of the cluster's, of one CPU, not this one's.
    assert back.results["eval:ppl@pretrain"].record.timings["threads"] == 1
    # A lone rank larger than any machine of the cluster: said at once, not waited for.
    lone = ["parallelism.cpus_per_rank=2", "stage.pretrain.steps=3"]
    began = time.monotonic()
    big, _ = _build(spec, store, c.address, overrides=lone)
    assert time.monotonic() - began < 60
    detail = big.results["stage:pretrain"].detail
    assert "the Ray cluster cannot hold this node, 2 cpu" in detail
    assert "the largest 1 CPUs" in detail and "Traceback" not in detail
    assert "checkpoint" not in detail  # other steps, another key: nothing written for it


def test_what_cannot_be_placed_says_the_fix_and_only_a_checkpoint_that_exists(tmp_path):
    """The capacity error names parallelism.device where no machine has a GPU, and says
    a checkpoint is kept only where the node's work dir holds one."""
    from llmbuild.backend import Resources
    from llmbuild.run.ranks import cannot_place
    from llmbuild.store.store import mark_checkpoint

    two_cpus = [{"CPU": 2.0}]
    assert cannot_place(Resources(cpus=1, ranks=2), two_cpus) is None
    said = cannot_place(Resources(cpus=1, gpus=1, ranks=2), two_cpus, tmp_path)
    assert said == (
        "the Ray cluster cannot hold this node's ranks, 2 x (1 cpu + 1 gpu): its 1 live "
        "node(s) have 2 CPUs and 0 GPUs in all, the largest 2 CPUs and 0 GPUs. Add machines "
        'with GPUs, or set parallelism.device = "auto" (a GPU where the machine has one, '
        'else its CPUs) or "cpu"'
    )
    mark_checkpoint(tmp_path, 40)
    said = cannot_place(Resources(cpus=2, ranks=2), two_cpus, tmp_path)
    assert said.endswith(
        "Add machines, or lower parallelism (data, tensor, pipeline) or cpus_per_rank; "
        "the checkpoint the stage wrote at step 40 is kept for the next build"
    )
    assert cannot_place(Resources(cpus=2, ranks=2), two_cpus) == said.split(";")[0]


def test_a_local_build_starts_its_own_ray_beside_a_running_cluster(cluster, monkeypatch):
    """Without an address a build starts a Ray of its own: it never joins (and shares the
    fate of) a cluster that runs on the same machine."""
    from llmbuild.run.executors import RayExecutor

    c, _ = cluster
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    executor = RayExecutor()
    executor.start()
    try:
        own = ray.get_runtime_context().gcs_address
        assert own != c.address
        assert len([n for n in ray.nodes() if n["Alive"]]) == 1
    finally:
        executor.shutdown()
