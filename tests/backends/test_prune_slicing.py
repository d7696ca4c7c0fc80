"""Pruning's weight surgery on real megatron-core models: parts made exactly dead (a layer
that adds nothing to the residual stream, MLP channels and query groups whose outputs are
zeroed) are the ones the importance measures drop, and dropping them leaves the logits
as they were; the pruned weights load strictly into a model of the smaller shape."""

from __future__ import annotations

import pytest
import torch
from llmbuild.backends.prune.importance import _top, choose, widths
from llmbuild.backends.prune.slicing import Keep, Shape, prune_state


def build(arch_fields: dict):
    from llmbuild.backends.megatron.generate import single_rank

    single_rank()
    from llmbuild.backends.megatron.model import build_model, canonical_state, transformer_config

    from llmbuild.spec.model import Architecture

    arch = Architecture.model_validate(arch_fields)
    torch.manual_seed(0)
    model = build_model(arch, 64, transformer_config(arch)).eval()
    return arch, model, canonical_state(model)


def logits(model, tokens):
    pos = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
    with torch.no_grad():
        return model(tokens, pos, None).float()


STYLES = {
    "gpt2": {"style": "gpt2", "layers": 3, "hidden": 32, "heads": 4, "ffn_hidden": 64,
             "seq_len": 16, "tie_embeddings": True},
    "llama": {"style": "llama", "layers": 3, "hidden": 32, "heads": 4, "kv_heads": 2,
              "ffn_hidden": 48, "seq_len": 16, "tie_embeddings": False},
}  # fmt: skip


@pytest.mark.parametrize("style", sorted(STYLES))
def test_dead_parts_are_dropped_and_the_logits_stay(style):
    arch, model, state = build(STYLES[style])
    before = Shape.of(arch)
    # Layer 1 adds nothing: its attention and MLP outputs are zero.
    for name in list(state):
        if name.startswith("decoder.layers.1.") and ("linear_proj" in name or "linear_fc2" in name):
            state[name] = torch.zeros_like(state[name])
    # In layers 0 and 2, MLP channels 3 and 7 and the second query group are dead: their
    # activations are zero (fc1's rows, and the group's values, are zero).
    q_rows = before.heads // before.kv_heads * before.head_dim
    group_rows = q_rows + 2 * before.head_dim  # a group's rows: its queries, k, v
    values = slice(group_rows + q_rows + before.head_dim, 2 * group_rows)  # group 1's v
    fc1_rows = [3, 7] + ([before.ffn_hidden + 3, before.ffn_hidden + 7] if before.gated else [])
    for i in (0, 2):
        for suffix in ("weight", "bias"):
            fc1 = state.get(f"decoder.layers.{i}.mlp.linear_fc1.{suffix}")
            if fc1 is not None:
                fc1[fc1_rows] = 0
            qkv = state.get(f"decoder.layers.{i}.self_attention.linear_qkv.{suffix}")
            if qkv is not None:
                qkv[values] = 0
    model.load_state_dict(state, strict=False)
    tokens = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(1))
    expected = logits(model, tokens)

    after = Shape(
        layers=2, hidden=before.hidden, kv_heads=before.kv_heads - 1,
        heads=(before.kv_heads - 1) * (before.heads // before.kv_heads),
        head_dim=before.head_dim, ffn_hidden=before.ffn_hidden - 2, gated=before.gated,
    )  # fmt: skip
    batches = [
        torch.randint(0, 64, (4, 13), generator=torch.Generator().manual_seed(s)) for s in range(3)
    ]
    chosen, report = choose(model, before, after, batches)
    # A layer that adds nothing costs nothing to remove (in a random model another layer
    # may even cost less than nothing, so the choice of layers is set below).
    assert report["layer_costs"][1] == pytest.approx(0.0, abs=1e-6)
    for i in set(chosen.layers) - {1}:
        assert 3 not in chosen.channels[i] and 7 not in chosen.channels[i]
        assert 1 not in chosen.groups[i]
    measured = widths(model, before, batches)
    keep = Keep(
        layers=[0, 2],
        groups={i: _top(measured["groups"][i], after.kv_heads) for i in (0, 2)},
        channels={i: _top(measured["ffn"][i], after.ffn_hidden) for i in (0, 2)},
        hidden=list(range(before.hidden)),
    )
    for i in (0, 2):
        assert keep.channels[i] == [c for c in range(before.ffn_hidden) if c not in (3, 7)]
        assert keep.groups[i] == [g for g in range(before.kv_heads) if g != 1]

    pruned = prune_state(state, before, keep)
    small = dict(STYLES[style], layers=2, heads=after.heads, ffn_hidden=after.ffn_hidden,
                 head_dim=before.head_dim)  # fmt: skip
    if "kv_heads" in small:
        small["kv_heads"] = after.kv_heads
    _, small_model, _ = build(small)
    missing, unexpected = small_model.load_state_dict(pruned, strict=False)
    assert not unexpected and not [m for m in missing if not m.endswith("_extra_state")]
    assert (logits(small_model, tokens) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("style", sorted(STYLES))
def test_hidden_pruning_gives_the_smaller_shape(style):
    arch, model, state = build(STYLES[style])
    before = Shape.of(arch)
    after = Shape(
        layers=before.layers, hidden=24, heads=before.heads, kv_heads=before.kv_heads,
        head_dim=before.head_dim, ffn_hidden=before.ffn_hidden, gated=before.gated,
    )  # fmt: skip
    batches = [torch.randint(0, 64, (2, 13), generator=torch.Generator().manual_seed(0))]
    keep, _ = choose(model, before, after, batches)
    assert len(keep.hidden) == 24 and keep.hidden == sorted(keep.hidden)
    pruned = prune_state(state, before, keep)
    small = dict(STYLES[style], hidden=24, head_dim=before.head_dim)
    _, small_model, _ = build(small)
    missing, unexpected = small_model.load_state_dict(pruned, strict=False)
    assert not unexpected and not [m for m in missing if not m.endswith("_extra_state")]
    tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(logits(small_model, tokens)).all()
