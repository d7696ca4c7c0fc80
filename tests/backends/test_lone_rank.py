"""What a one-rank layout on a CPU saves must not change a trained weight: at one
tensor-parallel rank the model's linears run through torch's linear and the row-parallel
ones skip their all-reduce over a group of one (``backends/megatron/linears.py``), its
layers run a forward without megatron's per-call options (``lone_layer.py``), and a
lone rank trains without megatron's DistributedDataParallel (``data_parallel.LoneRank``);
each must give the weights megatron's own path gives, bit for bit."""

from __future__ import annotations

import pytest

from llmbuild.spec.model import Architecture

STEPS, MICRO, ACCUM, SEQ, VOCAB = 3, 4, 2, 16, 128


def _train(
    arch,
    plain: bool,
    precision: str,
    lone: bool = True,
    clip: float = 0.5,
    layers: bool = True,
    adapter=None,
):
    import torch
    from llmbuild.backends.megatron import data_parallel
    from llmbuild.backends.megatron.linears import megatron_linears
    from llmbuild.backends.megatron.lone_layer import megatron_layers
    from llmbuild.backends.megatron.model import build_model, transformer_config
    from llmbuild.backends.megatron.objectives import LanguageModel

    torch.manual_seed(0)
    model = build_model(arch, VOCAB, transformer_config(arch))
    # Each layer's output projection and second MLP linear skip their output all-reduce.
    assert sum(getattr(m, "skips_lone_reduce", False) for m in model.modules()) == 2 * arch.layers
    if not plain:
        assert megatron_linears(model) == 4 * arch.layers + 1  # and the output layer
        assert not any(getattr(m, "explicit_expert_comm", False) for m in model.modules())
    if not (plain and layers):
        assert megatron_layers(model) == arch.layers
    if adapter is not None:
        from llmbuild.backends.megatron import lora

        lora.add_adapters(model, adapter)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # adapters too: B away from zero
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


@pytest.fixture
def megatron_forwards(monkeypatch):
    """A list that megatron's own ``TransformerLayer.forward`` appends to when it runs."""
    from llmbuild.backends.megatron.generate import single_rank

    single_rank()
    from megatron.core.transformer.transformer_layer import TransformerLayer

    calls, forward = [], TransformerLayer.forward
    monkeypatch.setattr(
        TransformerLayer, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k)
    )
    return calls


_LAYERS = {
    "gpt2": {"style": "gpt2", "bias": True},
    "gpt2, dropout": {"style": "gpt2", "bias": True, "dropout": 0.1},
    "llama, grouped-query": {"style": "llama", "kv_heads": 2},
    "qwen3, query/key norms": {"style": "llama", "kv_heads": 2, "qk_norm": True, "qkv_bias": True},
    "gelu_tanh, untied": {"style": "gpt2", "activation": "gelu_tanh", "tie_embeddings": False},
}


@pytest.mark.parametrize("shape", list(_LAYERS))
def test_the_lone_layer_forward_trains_megatrons_weights_bit_for_bit(shape, megatron_forwards):
    arch = Architecture.model_validate(
        {"layers": 2, "hidden": 32, "heads": 4, "seq_len": SEQ, **_LAYERS[shape]}
    )
    ours_losses, ours = _train(arch, True, "fp32")
    assert not megatron_forwards  # the lone forward ran, every call
    ref_losses, ref = _train(arch, True, "fp32", layers=False)
    assert len(megatron_forwards) == STEPS * ACCUM * arch.layers
    assert ours_losses == ref_losses
    assert not [k for k in ref if not (ours[k] == ref[k]).all()]
    assert ours_losses[0] != ours_losses[-1]


def test_the_lone_layer_forward_keeps_a_lora_adapters_hooks(megatron_forwards):
    from llmbuild.backends.megatron.spec import LoraAdapter

    arch = Architecture(style="llama", layers=2, hidden=32, heads=4, seq_len=SEQ)
    adapter = LoraAdapter(rank=4, alpha=8, targets=("qkv", "proj", "fc1", "fc2"))
    ours_losses, ours = _train(arch, True, "fp32", adapter=adapter)
    assert not megatron_forwards
    ref_losses, ref = _train(arch, True, "fp32", layers=False, adapter=adapter)
    assert ours_losses == ref_losses
    assert not [k for k in ref if not (ours[k] == ref[k]).all()]
    assert ours_losses[0] != ours_losses[-1]


@pytest.mark.parametrize("style", ["gpt2", "llama", "bert"])
def test_the_lone_layer_forward_gives_megatrons_logits_in_evaluation(style, megatron_forwards):
    """Under ``no_grad`` megatron's bias-dropout-add works in place; an encoder's layers
    are post-LN, with a padding mask."""
    import torch
    from llmbuild.backends.megatron.lone_layer import megatron_layers
    from llmbuild.backends.megatron.model import build_model, transformer_config

    arch = Architecture(style=style, layers=2, hidden=32, heads=4, seq_len=SEQ)
    torch.manual_seed(0)
    model = build_model(arch, VOCAB, transformer_config(arch)).eval()
    ids = torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(SEQ).expand(3, -1)
    mask = None
    if style == "bert":  # the last text padded: True = hidden
        mask = torch.zeros(3, 1, 1, SEQ, dtype=torch.bool)
        mask[2, ..., SEQ // 2 :] = True
    with torch.no_grad():
        ours = model(ids, pos, mask)
        assert not megatron_forwards
        assert megatron_layers(model) == 2
        ref = model(ids, pos, mask)
    ours, ref = (t[0] if isinstance(t, tuple) else t for t in (ours, ref))
    assert torch.equal(ours, ref)


def test_a_hooked_attention_or_mlp_keeps_megatrons_forward(megatron_forwards):
    """A hook on a layer's MLP (or a forward set on it) must run: that layer takes
    megatron's forward, the others the lone one."""
    import torch
    from llmbuild.backends.megatron.model import build_model, transformer_config

    arch = Architecture(style="gpt2", layers=2, hidden=32, heads=4, seq_len=SEQ)
    model = build_model(arch, VOCAB, transformer_config(arch))
    seen = []
    model.decoder.layers[0].mlp.register_forward_hook(lambda *_: seen.append(1))
    model.decoder.layers[1].self_attention.linear_qkv.forward = lambda x: (
        seen.append(2)
        or (
            torch.nn.functional.linear(x, model.decoder.layers[1].self_attention.linear_qkv.weight),
            None,
        )
    )
    ids = torch.randint(0, VOCAB, (2, SEQ))
    model(ids, torch.arange(SEQ).expand(2, -1), None)
    assert seen == [1, 2] and len(megatron_forwards) == 1


def test_layers_with_other_options_keep_megatrons_forward():
    from llmbuild.backends.megatron.generate import single_rank

    single_rank()
    from llmbuild.backends.megatron.lone_layer import plain_layers
    from llmbuild.backends.megatron.model import build_model, transformer_config

    arch = Architecture(style="gpt2", layers=2, hidden=32, heads=4, seq_len=SEQ)
    model = build_model(arch, VOCAB, transformer_config(arch, recompute="full"))
    assert not any("forward" in vars(m) for m in model.modules())
    assert plain_layers(model, transformer_config(arch, tensor=2)) == 0


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
    local multi-tensor stand-ins, with clipping in effect at every step (megatron's
    optimizer step, as at every layout but a lone rank's fp32)."""
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
    ours_losses, ours = _train(arch, True, precision, lone=False, clip=0.05)
    assert len(scaled) == STEPS and all(0 < s < 1 for s in scaled)  # every step clipped
    monkeypatch.setattr(clip_grads, "l2_norm_impl", utils.local_multi_tensor_l2_norm)
    monkeypatch.setattr(clip_grads, "multi_tensor_scale_impl", utils.local_multi_tensor_scale)
    ref_losses, ref = _train(arch, True, precision, lone=False, clip=0.05)
    assert ours_losses == ref_losses
    assert not [k for k in ref if not (ours[k] == ref[k]).all()]
    assert ours_losses[0] != ours_losses[-1]


@pytest.mark.parametrize("clip", [0.01, 0.0])
def test_a_lone_ranks_optimizer_step_is_megatrons_bit_for_bit(clip, monkeypatch):
    """``data_parallel._lone_step`` against megatron's ``ChainedOptimizer.step`` on the
    same lone rank: clipped at every step, and not clipped at all; the same weights and
    the same gradient norms."""
    from llmbuild.backends.megatron.generate import single_rank

    single_rank()
    from llmbuild.backends.megatron import data_parallel

    lone, norms = [], []
    lone_step, finish_step = data_parallel._lone_step, data_parallel.finish_step
    monkeypatch.setattr(data_parallel, "_lone_step", lambda o: lone.append(1) or lone_step(o))
    monkeypatch.setattr(
        data_parallel, "finish_step", lambda *a: norms.append(finish_step(*a)) or norms[-1]
    )
    arch = Architecture(style="llama", layers=2, hidden=32, heads=4, seq_len=SEQ)
    ours_losses, ours = _train(arch, True, "fp32", clip=clip)
    assert len(lone) == STEPS and all(n > clip for n in norms)  # clipped, where clip is set
    monkeypatch.setattr(data_parallel, "_plain_fp32", lambda optimizer: False)
    ref_losses, ref = _train(arch, True, "fp32", clip=clip)
    assert len(lone) == STEPS  # megatron's step this time
    assert norms[:STEPS] == norms[STEPS:]
    assert ours_losses == ref_losses
    assert not [k for k in ref if not (ours[k] == ref[k]).all()]
    assert ours_losses[0] != ours_losses[-1]
