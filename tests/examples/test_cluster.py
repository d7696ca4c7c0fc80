"""The multi-node example: a Llama-3-8B-class model on 64 GPUs, validated and planned
(never trained here), with its layout proved execution only and its sample data read."""

from __future__ import annotations

import json

from llmbuild.cli import main
from tests.conftest import REPO

SPEC = REPO / "examples" / "cluster" / "spec.toml"
NODES = [
    "source:web",
    "source:code",
    "source:chat",
    "source:prefs",
    "tokenizer",
    "tokenize:web",
    "tokenize:code",
    "tokenize:chat",
    "tokenize:prefs",
    "stage:pretrain",
    "stage:sft",
    "stage:dpo",
    "eval:ppl@pretrain",
    "eval:ppl@sft",
    "eval:ppl@dpo",
    "eval:harness@pretrain",
    "eval:harness@dpo",
    "eval:mmlu-gsm8k@dpo",
    "export:hf@dpo",
    "export:gguf@dpo",
]
# The same model on one GPU rank with one CPU: [parallelism] is execution only, so the keys
# are equal. (Not on one CPU rank: validate would find that 79 GiB do not fit this machine;
# and not with the spec's 8 CPUs a rank, more than this machine has.)
ONE_RANK = [
    "--set",
    "parallelism.tensor=1",
    "--set",
    "parallelism.pipeline=1",
    "--set",
    "parallelism.data=1",
    "--set",
    "parallelism.sequence_parallel=false",
    "--set",
    "parallelism.cpus_per_rank=1",
]


def _plan(capsys, store, *extra: str) -> dict:
    assert main(["plan", str(SPEC), "--store", str(store), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_cluster_example_validates_and_plans_its_nodes(tmp_path, capsys):
    assert main(["validate", str(SPEC)]) == 0
    assert "ok (4 sources, 3 stages, 3 evals, 2 exports)" in capsys.readouterr().out
    plan = _plan(capsys, tmp_path / "store")
    assert [n["name"] for n in plan["nodes"]] == NODES
    assert {n["status"] for n in plan["nodes"]} == {"build"}
    assert plan["summary"] == "20 nodes, 0 cached, 20 to build"
    for node in plan["nodes"]:
        if node["name"].startswith("stage:"):  # tensor 8 x data 8, a GPU each
            assert node["resources"] == {"cpus": 8, "gpus": 1.0, "ranks": 64}, node
    assert main(["plan", str(SPEC), "--store", str(tmp_path / "store")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("spec ") and lines[-1] == "20 nodes, 0 cached, 20 to build"


def test_cluster_layout_is_execution_only_and_an_edit_rebuilds_only_downstream(
    tmp_path, capsys, fixture_env
):
    from tests.run.helpers import fixture_build

    store = tmp_path / "store"
    assert fixture_build(SPEC, store, overrides=ONE_RANK[1::2]).ok
    # Built on one rank, planned for 64 GPUs: the same keys, all cached.
    plan = _plan(capsys, store)
    assert plan["summary"] == "20 nodes, 20 cached, 0 to build"
    plan = _plan(capsys, store, "--set", "stage.dpo.beta=0.2")
    rebuilt = {n["name"]: n for n in plan["nodes"] if n["status"] != "cached"}
    assert sorted(rebuilt) == sorted(
        [
            "stage:dpo",
            "eval:ppl@dpo",
            "eval:harness@dpo",
            "eval:mmlu-gsm8k@dpo",
            "export:hf@dpo",
            "export:gguf@dpo",
        ]
    )
    assert rebuilt["stage:dpo"]["changes"] == [{"field": "stage.dpo.beta", "old": 0.1, "new": 0.2}]


def test_cluster_sample_data_goes_through_the_data_nodes(tmp_path):
    from tests.backends.conftest import run_nodes

    data_nodes = tuple(n for n in NODES if n.startswith("tokenize:"))
    outcome = run_nodes(SPEC, tmp_path / "store", until=data_nodes)
    assert outcome.ok, outcome.log
    documents = {
        n: outcome.results[n].record.metrics["documents"] for n in NODES if n.startswith("source:")
    }
    assert documents == {"source:web": 6, "source:code": 4, "source:chat": 4, "source:prefs": 4}
    for n in data_nodes:
        assert outcome.results[n].record.metrics["train_tokens"] > 0, n
