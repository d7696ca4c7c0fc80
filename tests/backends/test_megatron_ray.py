"""Parallel equivalence over TorchTrainer ranks (gloo): two data-parallel (megatron DDP,
optionally with the distributed optimizer), tensor-parallel or pipeline-parallel ranks
train the same model as one rank on the same global batch.

A layout is execution only, so a stage has one key at every layout: the one-rank builds
go to the suite's store, and each layout's builds to a store of that layout's own beside
it (kept between runs like the suite's store)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from llmbuild.run.build import BuildOptions, BuildOutcome, PlainReporter, build
from llmbuild.spec.load import load_spec
from llmbuild.store.store import Store
from tests.backends.conftest import artifact, kill_after_checkpoint, run_nodes
from tests.backends.test_eval_export import OUTPUTS
from tests.backends.test_megatron import tiny_spec
from tests.conftest import REPO, artifact_dirs, private_copy, suite_store

ray = pytest.importorskip("ray")

MORE = """
[[stage]]
name = "more"
kind = "pretrain"
from = "pretrain"
steps = 3
global_batch = 8
lr = 1e-3
"""


@pytest.fixture(scope="module", autouse=True)
def _one_local_ray():
    """One local Ray cluster for the module's builds (each would otherwise start and stop
    its own), its workers importing this checkout."""
    from llmbuild.run.executors import start_local_ray, stop_local_ray

    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", str(REPO))
        start_local_ray()
        yield
        stop_local_ray()


def on_ray(
    spec: Path, store: Path, overrides: list[str], until=("stage:pretrain",)
) -> BuildOutcome:
    """A build under the Ray executor: on the module's cluster if one is running, else on
    a local one of its own that it stops when done."""
    outcome = build(
        load_spec(spec, overrides),
        Store(str(store)),
        BuildOptions(executor="ray", live=False, until=until),
        PlainReporter(io.StringIO()),
    )
    assert outcome.ok, {n: r.detail for n, r in outcome.results.items() if r.detail}
    return outcome


@pytest.fixture
def stores(tmp_path_factory):
    """(the one-rank store, the store of a layout given as its overrides)."""
    root = suite_store(tmp_path_factory)

    def layout(overrides: list[str]) -> Path:
        name = "-".join(o.replace("parallelism.", "").replace("=", "") for o in overrides)
        return root / "layouts" / name

    return root, layout


def metrics(outcome: BuildOutcome, store: Path, node: str = "stage:pretrain") -> list[dict]:
    path = artifact(outcome, store, node) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_training(
    stores, spec: Path, overrides: list[str], node: str = "stage:pretrain"
) -> BuildOutcome:
    """Build at one rank (inline) and at the layout of ``overrides`` (Ray); the losses
    agree within 1e-5 relative and the committed weights within 1e-4."""
    from safetensors.torch import load_file

    at_one, at = stores[0], stores[1](overrides)
    one = run_nodes(spec, at_one, (node,))
    two = on_ray(spec, at, overrides, until=(node,))
    assert two.planned.keys[node].key == one.planned.keys[node].key
    a, b = metrics(one, at_one, node), metrics(two, at, node)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 * abs(x["loss"]), (a, b)
    assert abs(a[-1]["val_loss"] - b[-1]["val_loss"]) <= 1e-5 * a[-1]["val_loss"]
    wa = load_file(str(artifact(one, at_one, node) / "model.safetensors"))
    wb = load_file(str(artifact(two, at, node) / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4
    return one


HF = """
[[export]]
format = "hf"
stage = "pretrain"
"""


def assert_hf_export_of_the_parallel_run(store: Path, spec: Path) -> None:
    """The hf export of the weights trained at the other layout: transformers loads it and
    its logits equal the megatron model's (the node checks within 1e-4)."""
    exported = run_nodes(spec, store, ("export:hf@pretrain",))
    assert exported.ok, exported.log
    assert exported.results["stage:pretrain"].state == "cached"
    assert exported.results["export:hf@pretrain"].record.metrics["max_logit_diff"] < 1e-4


DATA = ["parallelism.data=2", "parallelism.micro_batch=2"]
SHARDED = [*DATA, "parallelism.distributed_optimizer=true"]


def test_data_parallel_two_ranks_match_one(tmp_path, stores):
    import os

    spec = tiny_spec(tmp_path, steps=6)
    one = assert_same_training(stores, spec, DATA)
    key = one.planned.keys["stage:pretrain"].key
    two = Store(str(stores[1](DATA)))
    (record,) = [r for r in two.artifacts() if r.key == key]
    assert record.timings["rank0.threads"] == max(1, os.cpu_count() // 2)  # the cores shared


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_sequence_parallel_two_ranks_match_one(tmp_path, stores, style):
    """Tensor parallelism with the activations between layers split along the sequence
    (reduce-scatter / all-gather over gloo; norm gradients summed over the ranks)."""
    spec = tiny_spec(tmp_path, style=style, steps=6)
    assert_same_training(
        stores, spec, ["parallelism.tensor=2", "parallelism.sequence_parallel=true"]
    )


def test_distributed_optimizer_two_ranks_match_one(tmp_path, stores):
    """Optimizer state sharded over two data-parallel ranks (gradients reduce-scattered,
    updated parameters all-gathered) trains the same model as one rank, weight decay
    (none for biases and norms) included."""
    spec = tiny_spec(tmp_path, steps=6, extra="weight_decay = 0.1\n")
    assert_same_training(stores, spec, SHARDED)


def test_distributed_optimizer_resumes_exactly_after_a_real_kill(tmp_path, stores):
    """Each data-parallel rank checkpoints its own shard of the optimizer state; after the
    build (Ray cluster and ranks) is killed, the resumed run equals the uninterrupted one."""
    spec = tiny_spec(tmp_path, steps=20)
    at = stores[1](SHARDED)
    whole = on_ray(spec, at, SHARDED)
    store = tmp_path / "killed"
    marker = kill_after_checkpoint(spec, store, "stage:pretrain", "ray", SHARDED)
    assert json.loads(marker.read_text())["step"] == 10
    assert sorted(p.name for p in marker.parent.glob("checkpoint-*.pt")) == [
        "checkpoint-tp0-pp0-dp0.pt",
        "checkpoint-tp0-pp0-dp1.pt",
    ]
    assert not artifact_dirs(store, "stage:pretrain")
    resumed = on_ray(spec, store, SHARDED)
    record = resumed.results["stage:pretrain"].record
    assert "resume from step 10" in (store / Store.log_path(record.key)).read_text()
    a, b = metrics(whole, at), metrics(resumed, store)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert record.output_digest == whole.results["stage:pretrain"].record.output_digest


def test_distributed_optimizer_change_keeps_the_trained_stage(tmp_path, capsys):
    """``distributed_optimizer`` says how to run, not what is built: no node key changes."""
    from llmbuild.cli import main

    spec = tiny_spec(tmp_path, steps=2)
    assert run_nodes(spec, tmp_path / "s", ("stage:pretrain",)).ok
    capsys.readouterr()
    plan = ["plan", str(spec), "--store", str(tmp_path / "s"), "--json"]
    assert main([*plan, "--set", "parallelism.distributed_optimizer=true"]) == 0
    nodes = {n["name"]: n for n in json.loads(capsys.readouterr().out)["nodes"]}
    assert nodes["stage:pretrain"]["status"] == "cached", nodes["stage:pretrain"]


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_tensor_parallel_two_ranks_match_one(tmp_path, stores, style):
    """For llama, SwiGLU's fc1 is split per rank as [gate_r; up_r]: the initial and final
    weights are still the layout-independent ones."""
    spec = tiny_spec(tmp_path, style, steps=4, extra=HF)
    assert_same_training(stores, spec, ["parallelism.tensor=2"])
    assert_hf_export_of_the_parallel_run(stores[1](["parallelism.tensor=2"]), spec)


EVAL_AND_EXPORTS = """
[[eval]]
name = "ppl"
kind = "perplexity"
stages = ["pretrain"]
max_batches = 2
[[eval]]
name = "gen"
kind = "samples"
stages = ["pretrain"]
prompts = ["ROMEO:"]
max_new_tokens = 4
[[export]]
format = "hf"
stage = "pretrain"
[[export]]
format = "gguf"
stage = "pretrain"
"""


def test_a_tensor_parallel_stage_then_its_evals_and_exports_in_one_ray_build(tmp_path, stores):
    """The nodes after a stage trained at tensor = 2 run in the same Ray build, in workers
    that may have run its ranks (on a kept store: read back from it)."""
    spec = tiny_spec(tmp_path, "llama", steps=3, extra=EVAL_AND_EXPORTS)
    store = stores[1](["evals-exports", "tensor=2"])
    outcome = on_ray(spec, store, ["parallelism.tensor=2"], until=())
    assert len({r.state for r in outcome.results.values()}) == 1  # all built, or all kept
    assert outcome.results["export:hf@pretrain"].record.metrics["max_logit_diff"] < 1e-4
    assert outcome.results["eval:ppl@pretrain"].record.metrics["text.loss"] > 0


def test_a_worker_that_imported_the_model_module_first_can_still_run_any_node():
    """A Ray worker is reused across nodes: one that imported our model module (merging a
    tensor-parallel stage's shards does) must still be able to apply the CPU patches."""
    import subprocess
    import sys

    code = (
        "import llmbuild.backends.megatron.model\n"
        "from llmbuild.backends.megatron.cpu import apply_cpu_patches\n"
        "apply_cpu_patches()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_pipeline_parallel_two_stages_match_one(tmp_path, stores, style):
    """The 1F1B schedule over gloo; gpt2's tied embeddings stay in sync between the first
    and the last stage."""
    spec = tiny_spec(tmp_path, style, steps=4, extra=HF)
    assert_same_training(stores, spec, ["parallelism.pipeline=2"])
    assert_hf_export_of_the_parallel_run(stores[1](["parallelism.pipeline=2"]), spec)


def test_a_stage_after_a_layout_change_trains_from_the_artifact(tmp_path, stores):
    """The same spec at another layout: the trained stage is cached, and the stage after
    it trains at tensor = 2 from the layout-independent artifact made at tensor = 1."""
    spec = tiny_spec(tmp_path, steps=6, extra=MORE)
    store = stores[1](["layout-change"])
    kept = bool(artifact_dirs(store, "stage:more"))  # a kept store has both stages already
    one = run_nodes(spec, store, ("stage:pretrain",))
    more = on_ray(spec, store, ["parallelism.tensor=2"], until=())
    assert more.results["stage:pretrain"].state == "cached"
    assert more.results["stage:more"].state == ("cached" if kept else "built")
    last = metrics(one, store)[-1]["loss"]
    first = metrics(more, store, "stage:more")[0]["loss"]
    assert first < last + 0.3  # it starts from the trained weights, not from scratch


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_lora_under_tensor_parallelism_matches_one_rank(tmp_path, stores, preset):
    """LoRA adapters split like their layers: at tensor = 2 the adapter stage's losses and
    adapter weights equal those at one rank."""
    from safetensors.torch import load_file

    from tests.backends.posttrain_spec import posttrain_spec

    lora = """
[[stage]]
name = "lora"
kind = "lora"
from = "pretrain"
data = "chat"
steps = 4
global_batch = 8
lr = 3e-3
eval_batches = 1
adapter = { rank = 4, targets = ["qkv", "proj", "fc1", "fc2"] }
"""
    spec = posttrain_spec(tmp_path, lora, preset=preset)
    at_one, at = stores[1]([f"lora-{preset}"]), stores[1]([f"lora-{preset}", "tensor=2"])
    one = run_nodes(spec, at_one, ("stage:lora",))
    assert one.ok, one.log
    if not at.exists():  # the same store: only the lora stage runs again, at tensor = 2
        private_copy(at_one, at)
        for d in artifact_dirs(at, "stage:lora"):
            shutil.rmtree(d)
    two = on_ray(spec, at, ["parallelism.tensor=2"], until=("stage:lora",))
    a, b = metrics(one, at_one, "stage:lora"), metrics(two, at, "stage:lora")
    for x, y in zip(a, b, strict=True):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 * abs(x["loss"]), (a, b)
    wa = load_file(str(artifact(one, at_one, "stage:lora") / "adapter.safetensors"))
    wb = load_file(str(artifact(two, at, "stage:lora") / "adapter.safetensors"))
    assert wa.keys() == wb.keys() and len(wa) == 16
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5


EXECUTOR_OUTPUTS = (
    OUTPUTS
    + """
[[export]]
format = "onnx"
stage = "pretrain"
sources = ["text"]
max_batches = 2
"""
)


def test_evals_and_exports_record_the_same_figures_under_either_executor(tmp_path, stores):
    """A node's key does not name its executor, so neither may its result: an eval or an
    export takes the machine's cores as its threads, inline as under Ray."""
    import os

    spec = tiny_spec(tmp_path, "llama", steps=3, extra=EXECUTOR_OUTPUTS)
    inline = run_nodes(spec, stores[1](["executor-inline"]))
    assert inline.ok, inline.log
    ray_built = on_ray(spec, stores[1](["executor-ray"]), [], until=())
    for name in ("stage:pretrain", "eval:ppl@pretrain", "export:hf@pretrain",
                 "export:onnx@pretrain"):  # fmt: skip
        a, b = inline.results[name].record, ray_built.results[name].record
        assert a.key == b.key and a.build != b.build  # one node, built twice
        speed = ("tokens_per_s",)  # how fast, not what was built
        assert {k: v for k, v in a.metrics.items() if k not in speed} == {
            k: v for k, v in b.metrics.items() if k not in speed
        }, name
        if not name.startswith("stage:"):
            assert a.timings["threads"] == b.timings["threads"] == os.cpu_count(), name
    assert "perplexity" in inline.results["export:onnx@pretrain"].record.metrics


DISTILL = """
[[stage]]
name = "student"
kind = "distill"
teacher = "pretrain"
architecture = { layers = 1 }
steps = 4
global_batch = 8
lr = 1e-3
"""


def test_distill_at_two_tensor_ranks_matches_one(tmp_path, stores):
    """Student and teacher both split over two ranks: the KL over the vocabulary shards,
    gathered, is the one rank's."""
    spec = tiny_spec(tmp_path, "llama", steps=4, extra=DISTILL)
    assert_same_training(stores, spec, ["parallelism.tensor=2"], node="stage:student")


def test_encoder_two_tensor_parallel_ranks_match_one(tmp_path, stores):
    """A bert-style encoder's masked-LM stage at tensor = 2: the attention and MLM head's
    decoder split over two ranks, norms, positions and token types replicated."""
    from tests.backends.test_encoder import SPEC, encoder_spec

    text = SPEC.replace("steps = 500", "steps = 6", 1)
    spec = encoder_spec(tmp_path, text)
    assert_same_training(stores, spec, ["parallelism.tensor=2"], node="stage:mlm")
