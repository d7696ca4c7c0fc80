"""The compiled graph: explicit references, topological order, selection, resources."""

from __future__ import annotations

import pytest

from llmbuild.errors import UserError
from llmbuild.plan import compile_plan
from llmbuild.spec.load import load_spec


def test_references_are_explicit_and_ordered(project):
    graph = compile_plan(load_spec(project).spec)
    assert graph["stage:sft"].inputs == {
        "tokenizer": "tokenizer",
        "data:chat": "tokenize:chat",
        "from": "stage:pretrain",
    }
    assert graph["tokenizer"].inputs == {"text:books": "source:books"}
    assert graph["eval:ppl@sft"].inputs == {
        "model": "stage:sft",
        "tokenizer": "tokenizer",
        "data:books": "tokenize:books",
    }
    names = list(graph.nodes)
    for node in graph:
        assert all(names.index(u) < names.index(node.name) for u in node.upstream)
    assert graph["source:books"].cutoff and not graph["stage:pretrain"].cutoff


def test_stages_in_any_order(project):
    text = project.read_text()
    head, *stages = text.split("[[stage]]")
    tail = stages[-1].split("[[eval]]")
    stages[-1] = tail[0]
    project.write_text(
        head
        + "[[stage]]"
        + "[[stage]]".join(reversed(stages))
        + "[[eval]]"
        + "[[eval]]".join(tail[1:])
    )
    graph = compile_plan(load_spec(project).spec)
    order = [n for n in graph.nodes if n.startswith("stage:")]
    assert order == ["stage:pretrain", "stage:sft", "stage:dpo"]


def test_selection_and_downstream(project):
    graph = compile_plan(load_spec(project).spec)
    assert graph.select(only=["sft"]).nodes.keys() == {
        "source:books",
        "source:chat",
        "tokenizer",
        "tokenize:books",
        "tokenize:chat",
        "stage:pretrain",
        "stage:sft",
    }
    assert graph.downstream("stage:dpo") == ["export:hf@dpo"]
    with pytest.raises(UserError, match="did you mean"):
        graph.resolve_name("stage:sfft")


def test_training_resources_follow_parallelism(project):
    graph = compile_plan(
        load_spec(
            project, ["parallelism.tensor=2", "parallelism.data=2", "parallelism.device='gpu'"]
        ).spec
    )
    res = graph["stage:pretrain"].resources
    assert (res.ranks, res.gpus) == (4, 1.0)
    assert graph["source:books"].resources.ranks == 1
