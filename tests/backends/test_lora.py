"""LoRA adapters on megatron-core's parallel linear layers, in one process: only the
adapters receive gradients, they start as the identity, and merged weights give the
adapted model's logits."""

from __future__ import annotations

import pytest
from llmbuild.backends.megatron.spec import LoraAdapter

from llmbuild.spec.model import Architecture


def _arch(style: str) -> Architecture:
    return Architecture.model_validate(
        {"style": style, "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2 if style == "llama" else 4,
         "ffn_hidden": 96, "seq_len": 16}
    )  # fmt: skip


def _model(arch: Architecture, vocab: int = 50):
    from llmbuild.backends.megatron.generate import single_rank

    single_rank()
    from llmbuild.backends.megatron.model import build_model, transformer_config
    from llmbuild.backends.megatron.shards import canonical_init, load_canonical

    model = build_model(arch, vocab, transformer_config(arch))
    base = canonical_init(model, arch, seed=1)
    load_canonical(model, base, arch.activation == "swiglu")
    return model, base


def _logits(model, ids):
    import torch

    pos = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    with torch.no_grad():
        return model(ids, pos, None).float()


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_only_adapters_learn_and_merged_weights_give_the_same_logits(style):
    import torch
    from llmbuild.backends.megatron import lora
    from llmbuild.backends.megatron.objectives import masked_mean, token_losses
    from llmbuild.backends.megatron.shards import gather_canonical, load_canonical

    arch = _arch(style)
    adapter = LoraAdapter(rank=4, alpha=8, targets=("qkv", "proj", "fc1", "fc2"))
    model, base = _model(arch)
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    before = _logits(model, ids)
    names = lora.add_adapters(model, adapter)
    assert len(names) == 2 * 4 * arch.layers
    init = {**base, **lora.init_adapters(model, seed=1)}
    load_canonical(model, init, arch.activation == "swiglu")
    # B starts at zero: the adapted model is the base model.
    assert torch.equal(_logits(model, ids), before)

    batch = {
        "tokens": ids,
        "labels": torch.roll(ids, -1, 1),
        "loss_mask": torch.ones(2, 16),
        "position_ids": torch.arange(16).expand(2, -1),
    }
    masked_mean(token_losses(model, batch), batch).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(names)  # the frozen base gets no gradient at all
    # Give B values (as training would) and compare the merged model's logits.
    gen = torch.Generator().manual_seed(2)
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            p.data.normal_(0, 0.05, generator=gen)
    adapted = _logits(model, ids)
    assert (adapted - before).abs().max() > 1e-3
    state = gather_canonical(model, arch.activation == "swiglu")
    adapters = {k: v for k, v in state.items() if lora.is_adapter(k)}
    merged = lora.merge(base, adapters, adapter.alpha / adapter.rank)
    plain, _ = _model(arch)
    load_canonical(plain, merged, arch.activation == "swiglu")
    assert float((_logits(plain, ids) - adapted).abs().max()) < 1e-5
    lora.set_enabled(model, False)
    assert torch.equal(_logits(model, ids), before)  # adapters off: the base again
