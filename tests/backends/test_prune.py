"""A pruned stage on megatron-core: it has the shape and parameter count its spec asks
for, trains further (distilled from the model it was cut from), exports to transformers
with matching logits, and a bad pruning target is a located error."""

from __future__ import annotations

import json

import pytest

from tests.backends.conftest import artifact, run_nodes
from tests.backends.test_megatron import tiny_spec
from tests.conftest import suite_store

PRUNED = """
[[stage]]
name = "pruned"
kind = "prune"
from = "pretrain"
architecture = {{ {shape} }}
calibration_batches = 2

[[stage]]
name = "healed"
kind = "distill"
teacher = "pretrain"
from = "pruned"
steps = 40
global_batch = 8
lr = 2e-3
eval_batches = 4

[[export]]
format = "hf"
stage = "pruned"

[[export]]
format = "hf"
stage = "healed"
"""
SHAPE = "layers = 1, heads = 2, ffn_hidden = 96, hidden = 48"


def spec_with(root, shape=SHAPE, style="llama"):
    return tiny_spec(root, style, steps=60, extra=PRUNED.format(shape=shape))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    spec = spec_with(tmp_path_factory.mktemp("prune"))
    store = suite_store(tmp_path_factory)
    outcome = run_nodes(spec, store)
    assert outcome.ok, outcome.log
    return spec, store, outcome


def test_the_pruned_stage_has_the_shape_and_size_asked_for(built):
    import torch
    from llmbuild.backends.megatron.generate import single_rank
    from llmbuild.backends.megatron.model import build_model, canonical_state, transformer_config

    from llmbuild.spec.model import Architecture

    _, store, outcome = built
    config = json.loads((artifact(outcome, store, "stage:pruned") / "config.json").read_text())
    arch = Architecture.model_validate(config["architecture"])
    assert (arch.layers, arch.heads, arch.kv_heads, arch.ffn_hidden, arch.hidden) == (
        1, 2, 1, 96, 48,
    )  # fmt: skip
    assert arch.head_size == 16  # each head keeps its size: 64 / 4
    single_rank()
    torch.manual_seed(0)
    fresh = canonical_state(build_model(arch, config["vocab_size"], transformer_config(arch)))
    metrics = outcome.results["stage:pruned"].record.metrics
    padding = config["padded_vocab_size"] - config["vocab_size"]  # rows for no token
    rows = sum(
        padding * t.shape[1]
        for k, t in fresh.items()
        if k.startswith(("embedding.word_embeddings.", "output_layer."))
    )
    assert metrics["parameters"] == sum(t.numel() for t in fresh.values()) - rows
    assert metrics["parameters"] < metrics["parameters_before"]
    assert metrics["dropped_layers"] == 1
    report = json.loads((artifact(outcome, store, "stage:pruned") / "importance.json").read_text())
    assert len(report["layer_costs"]) == 2 and len(report["kept_layers"]) == 1


def test_the_pruned_model_trains_and_exports_with_matching_logits(built):
    _, _, outcome = built
    for stage in ("pruned", "healed"):
        assert outcome.results[f"export:hf@{stage}"].record.metrics["max_logit_diff"] < 1e-4
    healed = outcome.results["stage:healed"].record.metrics
    # Distillation from the model it was cut from recovers what pruning cost.
    assert healed["val_loss"] < healed["initial_val_loss"] - 0.1, healed


@pytest.mark.parametrize(
    ("shape", "message", "field", "style", "overrides"),
    [
        ("layers = 3", "layers (3) exceeds the pruned stage's (2)", "layers", "llama", []),
        ("layers = 0", "must be > 0 (got 0)", "layers", "llama", []),
        ("layers = 2", "prunes nothing: the pruned stage already has layers = 2", "layers",
         "llama", []),
        ("heads = 2, kv_heads = 2", "must keep the pruned stage's ratio", "heads", "llama", []),
        ("seq_len = 16", "pruning changes only", "seq_len", "llama", []),
        # GPT2LMHeadModel's head size is hidden / heads: the export would fail at the end.
        ("hidden = 48", "prune heads and hidden together, 16", "hidden", "gpt2", []),
        ("heads = 2", "tensor (2) must divide heads (2) and kv_heads (1)", "", "llama",
         ["parallelism.tensor=2"]),
    ],
)  # fmt: skip
def test_a_bad_pruning_target_is_a_located_error(tmp_path, shape, message, field, style, overrides):
    from llmbuild.errors import SpecError
    from llmbuild.plan import StatCache, plan_spec
    from llmbuild.spec.load import load_spec

    with pytest.raises(SpecError) as e:
        plan_spec(load_spec(spec_with(tmp_path, shape, style), overrides), cache=StatCache())
    assert message in str(e.value)
    assert f"stage[1].architecture{'.' if field else ''}{field}" in str(e.value)


def test_a_cycle_through_a_pruned_stage_is_a_plain_error(tmp_path):
    from llmbuild.errors import SpecError
    from llmbuild.spec.load import load_spec

    spec = spec_with(tmp_path)
    spec.write_text(
        spec.read_text().replace('kind = "pretrain"\n', 'kind = "pretrain"\nfrom = "pruned"\n', 1)
    )
    with pytest.raises(SpecError, match="cycle"):
        load_spec(spec)


def test_pruning_a_stage_of_adapters_alone_is_a_located_error(tmp_path):
    from llmbuild.errors import SpecError
    from llmbuild.plan import StatCache, plan_spec
    from llmbuild.spec.load import load_spec
    from tests.backends.posttrain_spec import posttrain_spec

    stages = """
[[stage]]
name = "tuned"
kind = "lora"
from = "pretrain"
data = "chat"
steps = 5
global_batch = 8

[[stage]]
name = "smaller"
kind = "prune"
from = "tuned"
architecture = { layers = 1 }
"""
    spec = posttrain_spec(tmp_path, stages)
    with pytest.raises(SpecError) as e:
        plan_spec(load_spec(spec), cache=StatCache())
    assert "stage 'tuned' holds only LoRA adapters" in str(e.value)
    assert "set merge = true on 'tuned'" in str(e.value)
    assert "stage[2].from" in str(e.value)
    plan_spec(load_spec(spec, ["stage.tuned.merge=true"]), cache=StatCache())  # then it plans
