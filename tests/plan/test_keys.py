"""Which edits change which node keys (table-driven), and golden keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmbuild.plan import StatCache, plan_spec
from llmbuild.plan.status import explain
from llmbuild.spec.load import load_spec
from tests.conftest import FULL_SPEC, write_project

ALL = {
    "source:books",
    "source:chat",
    "source:prefs",
    "tokenizer",
    "tokenize:books",
    "tokenize:chat",
    "tokenize:prefs",
    "stage:pretrain",
    "stage:sft",
    "stage:dpo",
    "eval:ppl@pretrain",
    "eval:ppl@sft",
    "eval:gen@sft",
    "export:hf@dpo",
}
FROM_PRETRAIN = {n for n in ALL if n.split(":")[0] in ("stage", "eval", "export")}
FROM_SFT = {"stage:sft", "stage:dpo", "eval:ppl@sft", "eval:gen@sft", "export:hf@dpo"}


def keys(spec: Path, overrides=()) -> dict[str, str]:
    planned = plan_spec(load_spec(spec, overrides), cache=StatCache())
    return {name: k.key for name, k in planned.keys.items()}


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert before.keys() == after.keys()
    return {n for n in before if before[n] != after[n]}


def test_graph_nodes(project):
    assert set(keys(project)) == ALL


def test_a_batch_size_that_sets_how_much_is_measured_enters_the_key(project):
    """With max_batches, the batch size sets how many sequences the suite measures: a
    change rebuilds it and plan says which field; at its default the key is as before."""
    capped = keys(project, ["eval.ppl.max_batches=3"])
    assert capped == keys(project, ["eval.ppl.max_batches=3", "eval.ppl.batch_size=8"])
    more = ["eval.ppl.max_batches=3", "eval.ppl.batch_size=16"]
    assert changed(capped, keys(project, more)) == {"eval:ppl@pretrain", "eval:ppl@sft"}
    planned = plan_spec(load_spec(project, more), cache=StatCache())
    node = planned.graph["eval:ppl@sft"]
    old = plan_spec(load_spec(project, more[:1]), cache=StatCache()).keys["eval:ppl@sft"]
    changes, _ = explain(node, old.preimage, planned.keys["eval:ppl@sft"].preimage)
    assert [str(c) for c in changes] == ["eval.ppl.batch_size 8 -> 16"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("eval.gen.max_new_tokens=10", {"eval:gen@sft"}),
        ("eval.ppl.max_batches=3", {"eval:ppl@pretrain", "eval:ppl@sft"}),
        ("eval.ppl.batch_size=16", set()),  # only how the sequences are grouped
        ("stage.sft.lr=1e-5", FROM_SFT),
        ("stage.dpo.beta=0.2", {"stage:dpo", "export:hf@dpo"}),
        ("stage.pretrain.steps=30", FROM_PRETRAIN),
        ("model.seed=8", FROM_PRETRAIN),
        ("data.sources.books.weight=2.0", FROM_PRETRAIN),
        (
            "tokenizer.eos_token='<eos>'",
            {"tokenizer", "tokenize:books", "tokenize:chat", "tokenize:prefs"} | FROM_PRETRAIN,
        ),
        ("data.clean.min_chars=5", ALL),
        ("data.sources.chat.on_error='skip'", {"source:chat", "tokenize:chat"} | FROM_SFT),
        ("export.hf@dpo.dtype='bfloat16'", {"export:hf@dpo"}),
        ("model.name=renamed", set()),
    ],
)
def test_spec_edits(project, override, expected):
    if override.startswith("export.hf@dpo"):
        override = override.replace("export.hf@dpo", "export[0]")
    assert changed(keys(project), keys(project, [override])) == expected


@pytest.mark.parametrize(
    "field",
    [
        "layers=2",
        "hidden=256",
        "heads=2",
        "kv_heads=2",
        "ffn_hidden=256",
        "seq_len=32",
        "norm='rmsnorm'",
        "norm_eps=1e-6",
        "activation='swiglu'",
        "position='rope'",
        "rope_base=500000.0",
        "bias=true",
        "tie_embeddings=false",
        "dropout=0.1",
        "init_std=0.01",
        "vocab_multiple=64",
        "style='llama'",
    ],
)
def test_any_architecture_field_changes_pretrain_onward_only(project, field):
    assert changed(keys(project), keys(project, [f"architecture.{field}"])) == FROM_PRETRAIN


@pytest.mark.parametrize(
    "override",
    [
        "parallelism.tensor=2",
        "parallelism.pipeline=2",
        "parallelism.data=2",
        "parallelism.micro_batch=1",
        ("parallelism.tensor=2", "parallelism.sequence_parallel=true"),
        "parallelism.recompute='full'",
        "parallelism.distributed_optimizer=true",
        "parallelism.device='gpu'",
        "parallelism.cpus_per_rank=2",
        "stage.pretrain.log_every=1",
        "stage.pretrain.checkpoint_every=5",
        "stage.sft.eval_every=2",
        "eval.ppl.batch_size=1",
    ],
)
def test_execution_only_fields_change_no_key(project, override):
    overrides = [override] if isinstance(override, str) else list(override)
    assert changed(keys(project), keys(project, overrides)) == set()


@pytest.mark.parametrize(
    "path",
    [
        "data/books",
        "data/books/",
        "data/*/*.txt",
        "./data/books/[ab].txt",
        ["data/books/a.txt", "data/books/b.txt"],
    ],
)
def test_glob_matching_the_same_files_changes_no_key(project, path, monkeypatch):
    monkeypatch.chdir(project.parent)  # --set paths are relative to the working directory
    value = repr(path).replace("'", '"')
    assert changed(keys(project), keys(project, [f"data.sources.books.path={value}"])) == set()


def test_data_content_changes_its_source_and_everything_downstream(project):
    before = keys(project)
    (project.parent / "data" / "chat.jsonl").write_text('{"messages": []}\n')
    assert changed(before, keys(project)) == {"source:chat", "tokenize:chat"} | FROM_SFT
    before = keys(project)
    (project.parent / "data" / "books" / "a.txt").write_text("Something else.\n")
    assert changed(before, keys(project)) == ALL - {"source:chat", "source:prefs"}


def test_adding_a_file_to_a_glob_changes_the_source(project):
    before = keys(project)
    (project.parent / "data" / "books" / "c.txt").write_text("More.\n")
    assert "source:books" in changed(before, keys(project))


def test_renaming_a_stage_rebuilds_only_the_files_that_carry_its_name(tmp_path):
    """A stage's name is a label: renaming it keeps every key but a GGUF export's, whose
    file carries the name (general.finetune)."""
    gguf = '\n[[export]]\nformat = "gguf"\nstage = "dpo"\n'
    spec = FULL_SPEC + gguf
    before = keys(write_project(tmp_path / "a", spec))
    renamed = spec.replace('name = "dpo"', 'name = "aligned"').replace(
        'stage = "dpo"', 'stage = "aligned"'
    )
    after = keys(write_project(tmp_path / "b", renamed))
    names = {"export:hf@aligned": "export:hf@dpo", "export:gguf@aligned": "export:gguf@dpo",
             "stage:aligned": "stage:dpo"}  # fmt: skip
    after = {names.get(n, n): k for n, k in after.items()}
    assert changed(before, after) == {"export:gguf@dpo"}


def test_golden_keys(tmp_path):
    # These literal keys change only when the key preimage of these nodes changes: a new
    # schema default, a backend version bump, or a change to canonical JSON. If one of
    # those was intended, update the literals in the same commit.
    got = keys(write_project(tmp_path, FULL_SPEC))
    assert {n: got[n][:16] for n in ("source:books", "tokenizer", "stage:pretrain")} == GOLDEN


def test_golden_key_of_a_stage_with_its_own_architecture(tmp_path):
    """A stage's architecture changes enter its key field by field: an architecture field
    added since (``norm_bias``) must leave this key as it was while unset."""
    pruned = '\n[[stage]]\nname = "pruned"\nkind = "prune"\nfrom = "pretrain"\n'
    got = keys(write_project(tmp_path, FULL_SPEC + pruned + "architecture = { layers = 1 }\n"))
    assert got["stage:pruned"][:16] == "4973ce77810a5f8b"


GOLDEN = {
    "source:books": "5b495bbd696fccfc",
    "tokenizer": "0ec76a00c84b782d",
    "stage:pretrain": "c825269d742b94ff",
}
