"""What a one-rank layout on a CPU saves must not change a trained weight: at one
tensor-parallel rank the model's linears run through torch's linear and the row-parallel
ones skip their all-reduce over a group of one (``backends/megatron/linears.py``), and a
lone rank trains without megatron's DistributedDataParallel (``data_parallel.LoneRank``);
each must give the weights megatron's own path gives, bit for bit."""

from __future__ import annotations

import pytest

from llmbuild.spec.model import Architecture

STEPS, MICRO, ACCUM, SEQ, VOCAB = 3, 4, 2, 16, 128


def _train(arch, plain: bool, precision: str, lone: bool = True, clip: float = 0.5):
    import torch
    from llmbuild.backends.megatron import data_parallel
    from llmbuild.backends.megatron.linears import megatron_linears
    from llmbuild.backends.megatron.model import build_model, transformer_config
    from llmbuild.backends.megatron.objectives import LanguageModel

    torch.manual_seed(0)
    model = build_model(arch, VOCAB, transformer_config(arch))
    # Each layer's output projection and second MLP linear skip their output all-reduce.
    assert sum(getattr(m, "skips_lone_reduce", False) for m in model.modules()) == 2 * arch.layers
    if not plain:
        assert megatron_linears(model) == 4 * arch.layers + 1  # and the output layer
        assert not any(getattr(m, "explicit_expert_comm", False) for m in model.modules())
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    stage = {"betas": [0.9, 0.95], "lr": 1e-2, "weight_decay": 0.1, "eps": 1e-8, "grad_clip": clip}
    if lone:
        ddp = data_parallel.apply_data_parallel(model, False)
        assert isinstance(ddp, data_parallel.LoneRank)
    else:
        ddp = data_parallel.megatron_ddp(model, False)
    opt = data_parallel.build_optimizer(ddp, stage, False)
    objective = LanguageModel(None, None, precision, SEQ)
    generator = torch.Generator().manual_seed(2)
    losses = []
    for _ in range(STEPS):
        data_parallel.set_lr(opt, stage["lr"], stage["weight_decay"])
        data_parallel.start_step(ddp, opt)
        for _ in range(ACCUM):
            tokens = torch.randint(0, VOCAB, (MICRO, SEQ + 1), generator=generator)
            batch = {
                "tokens": tokens[:, :-1],
                "labels": tokens[:, 1:],
                "loss_mask": torch.ones(MICRO, SEQ),
                "position_ids": torch.arange(SEQ).expand(MICRO, -1),
            }
            loss, _ = objective.loss(ddp, batch)
            (loss / ACCUM).backward()
            losses.append(loss.item())
        data_parallel.finish_step(ddp, opt)
    return losses, {
        k: v.detach().clone() for k, v in model.state_dict().items() if "extra" not in k
    }


@pytest.mark.parametrize(
    ("style", "bias", "precision"),
    [("gpt2", True, "fp32"), ("llama", False, "fp32"), ("gpt2", True, "bf16")],
)
def test_torch_linears_train_megatrons_weights_bit_for_bit(style, bias, precision):
    from llmbuild.backends.megatron.generate import single_rank

    single_rank()
    arch = Architecture(style=style, layers=2, hidden=32, heads=4, seq_len=SEQ, bias=bias)
    plain_losses, plain = _train(arch, True, precision)
    ref_losses, ref = _train(arch, False, precision)
    assert plain_losses == ref_losses
    assert plain.keys() == ref.keys()
    different = [k for k in ref if not (plain[k] == ref[k]).all()]
    assert not different
    # and training moved them: the comparison is not of two untouched inits
    assert plain_losses[0] != plain_losses[-1]


@pytest.mark.parametrize(
    ("style", "bias", "precision"), [("gpt2", True, "fp32"), ("llama", False, "bf16")]
)
def test_a_lone_rank_trains_megatron_ddps_weights_bit_for_bit(style, bias, precision):
    from llmbuild.backends.megatron.generate import single_rank

    single_rank()
    arch = Architecture(style=style, layers=2, hidden=32, heads=4, seq_len=SEQ, bias=bias)
    lone_losses, lone = _train(arch, True, precision)
    ddp_losses, ddp = _train(arch, True, precision, lone=False)
    assert lone_losses == ddp_losses
    assert lone.keys() == ddp.keys()
    assert not [k for k in ddp if not (lone[k] == ddp[k]).all()]
    assert lone_losses[0] != lone_losses[-1]


def test_a_sharded_optimizer_keeps_megatron_ddp():
    from llmbuild.backends.megatron import data_parallel
    from llmbuild.backends.megatron.generate import single_rank
    from llmbuild.backends.megatron.model import build_model, transformer_config
    from megatron.core.distributed import DistributedDataParallel

    single_rank()
    arch = Architecture(style="gpt2", layers=1, hidden=32, heads=4, seq_len=SEQ)
    model = build_model(arch, VOCAB, transformer_config(arch))
    assert isinstance(data_parallel.apply_data_parallel(model, True), DistributedDataParallel)


def test_other_layouts_keep_megatrons_linears():
    from types import SimpleNamespace

    from llmbuild.backends.megatron.linears import plain_linears

    config = SimpleNamespace(tensor_model_parallel_size=2, sequence_parallel=False)
    assert plain_linears(None, config) == 0
    config = SimpleNamespace(tensor_model_parallel_size=1, sequence_parallel=True)
    assert plain_linears(None, config) == 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_foreach_clipping_trains_megatrons_weights_bit_for_bit(precision, monkeypatch):
    """Gradient clipping through torch's foreach ops (``cpu.py``) against megatron's own
    local multi-tensor stand-ins, with clipping in effect at every step."""
    from llmbuild.backends.megatron.generate import single_rank

    single_rank()  # the CPU patches, before megatron is imported
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads

    ours_scale = clip_grads.multi_tensor_scale_impl
    assert clip_grads.l2_norm_impl is not utils.local_multi_tensor_l2_norm
    scaled = []
    monkeypatch.setattr(
        clip_grads,
        "multi_tensor_scale_impl",
        lambda *a: scaled.append(a[-1]) or ours_scale(*a),
    )
    arch = Architecture(style="gpt2", layers=2, hidden=32, heads=4, seq_len=SEQ, bias=True)
    ours_losses, ours = _train(arch, True, precision, clip=0.05)
    assert len(scaled) == STEPS and all(0 < s < 1 for s in scaled)  # every step clipped
    monkeypatch.setattr(clip_grads, "l2_norm_impl", utils.local_multi_tensor_l2_norm)
    monkeypatch.setattr(clip_grads, "multi_tensor_scale_impl", utils.local_multi_tensor_scale)
    ref_losses, ref = _train(arch, True, precision, clip=0.05)
    assert ours_losses == ref_losses
    assert not [k for k in ref if not (ours[k] == ref[k]).all()]
    assert ours_losses[0] != ours_losses[-1]
