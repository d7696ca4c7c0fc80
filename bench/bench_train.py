"""Training step throughput in one process: the training loop's step (megatron-core
GPTModel at one rank, megatron's optimizer with clipping: exactly what ``train.py`` runs
per step) against the step of ``bench/nanogpt.py``'s plain-PyTorch decoder of identical
shape and batch (forward, backward, ``clip_grad_norm_``, AdamW) at the e2e benchmark's
vocabulary (65 characters, 128 rows on our side as trained), measured in the same run
in alternating rounds (BENCH_TRAIN_ROUNDS x BENCH_TRAIN_STEPS, default 7 x 20, 3 x 10
with --quick; tokens/s, ratio = ours / plain). Also each side's forward and backward
alone, and our step through megatron's own linear Functions, layer forward and
DistributedDataParallel in place of the one-rank paths (``backends/megatron/linears.py``,
``lone_layer.py``, ``data_parallel.LoneRank``) to show what those save."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LAYERS, HIDDEN, HEADS, SEQ, BATCH = 4, 128, 4, 64, 12
VOCAB = 65  # tinyshakespeare's characters, as in bench_e2e: our model pads its embedding
# to 128 rows (``vocab_multiple``) and hides the padded logits, as the stage trains it; the
# plain decoder has 65 rows
WARMUP = 10
STAGE = {"betas": [0.9, 0.99], "lr": 1e-3, "weight_decay": 0.1, "eps": 1e-8, "grad_clip": 1.0}


def _plain_step(batch):
    """nanogpt.py's model and the body of its training loop."""
    import torch

    from bench import nanogpt

    assert (nanogpt.LAYERS, nanogpt.HIDDEN, nanogpt.HEADS, nanogpt.BLOCK) == (
        LAYERS, HIDDEN, HEADS, SEQ,
    )  # fmt: skip
    model = nanogpt.GPT(VOCAB)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.99),
    )

    def step() -> tuple[float, float]:
        began = time.perf_counter()
        loss = model(batch["tokens"], batch["labels"])
        loss.backward()
        model_done = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return model_done - began, time.perf_counter() - began

    return step


def _our_step(batch, one_rank_paths: bool = True):
    """The training loop's step (``train.py``) at one rank, fp32, one micro batch; with
    ``one_rank_paths`` off, through megatron's linears, layers and DDP as at other
    layouts."""
    from llmbuild.backends.megatron.generate import single_rank

    single_rank()
    from llmbuild.backends.megatron import data_parallel
    from llmbuild.backends.megatron.linears import megatron_linears
    from llmbuild.backends.megatron.lone_layer import megatron_layers
    from llmbuild.backends.megatron.model import build_model, transformer_config
    from llmbuild.backends.megatron.objectives import LanguageModel

    from llmbuild.spec.model import Architecture

    arch = Architecture(
        style="gpt2", layers=LAYERS, hidden=HIDDEN, heads=HEADS, seq_len=SEQ, bias=False,
        norm_bias=False, tie_embeddings=True, dropout=0.0,
    )  # fmt: skip
    model = build_model(arch, VOCAB, transformer_config(arch))
    if one_rank_paths:
        ddp = data_parallel.apply_data_parallel(model, False)
    else:
        megatron_linears(model)
        megatron_layers(model)
        ddp = data_parallel.megatron_ddp(model, False)
    opt = data_parallel.build_optimizer(ddp, STAGE, False)
    objective = LanguageModel(None, None, "fp32", SEQ)  # what a pretrain stage optimises

    def step() -> tuple[float, float]:
        began = time.perf_counter()
        data_parallel.set_lr(opt, STAGE["lr"], STAGE["weight_decay"])
        data_parallel.start_step(ddp, opt)
        loss, _ = objective.loss(ddp, batch)
        loss.backward()
        model_done = time.perf_counter()
        data_parallel.finish_step(ddp, opt)
        return model_done - began, time.perf_counter() - began

    return step


def _rates(steps: dict, rounds: int, per_round: int) -> dict[str, tuple[float, float]]:
    """Median tokens/s of each step function, whole and forward + backward alone, measured
    in alternating rounds so that drift in the machine's speed affects all alike."""
    for step in steps.values():
        for _ in range(WARMUP):
            step()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    tokens = per_round * BATCH * SEQ
    for _ in range(rounds):
        for name, step in steps.items():
            model = whole = 0.0
            for _ in range(per_round):
                m, w = step()
                model, whole = model + m, whole + w
            samples[name].append((tokens / whole, tokens / model))
    return {
        name: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v))
        for name, v in samples.items()
    }


def make_batch() -> dict:
    """One micro batch of random tokens, as the training loop hands it to the model."""
    import torch

    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ))
    return {
        "tokens": tokens,
        "labels": torch.roll(tokens, -1, dims=1),
        "position_ids": torch.arange(SEQ).unsqueeze(0).expand(BATCH, -1),
        "loss_mask": torch.ones(BATCH, SEQ),
    }


def run(quick: bool = False) -> list[dict]:
    rounds = int(os.environ.get("BENCH_TRAIN_ROUNDS", "3" if quick else "7"))
    per_round = int(os.environ.get("BENCH_TRAIN_STEPS", "10" if quick else "20"))

    batch = make_batch()
    steps = {
        "plain": _plain_step(batch),
        "ours": _our_step(batch),
        "megatron_paths": _our_step(batch, one_rank_paths=False),
    }
    rates = _rates(steps, rounds, per_round)
    (plain, plain_fb), (ours, ours_fb) = rates["plain"], rates["ours"]
    shape = f"{LAYERS} x {HIDDEN}, seq {SEQ}, batch {BATCH}, vocabulary {VOCAB}, median of {rounds} rounds"
    return [
        {
            "benchmark": f"training step in one process: the training loop's step (megatron-core "
            f"GPTModel, megatron's optimizer with clipping, the one-rank paths; {shape})",
            "result": f"{ours:,.0f} tok/s",
            "baseline": f"nanogpt.py's step (plain PyTorch decoder of identical shape, "
            f"clip_grad_norm_, AdamW), alternating rounds: {plain:,.0f} tok/s",
            "ratio": ours / plain,
            "unit": "plain PyTorch's throughput",
            "target": "1.0x",
        },
        {
            "benchmark": "the same steps' forward and backward alone",
            "result": f"{ours_fb:,.0f} tok/s",
            "baseline": f"the plain decoder's forward and backward: {plain_fb:,.0f} tok/s",
            "ratio": ours_fb / plain_fb,
            "unit": "plain PyTorch's throughput",
            "target": "",
        },
        {
            "benchmark": "our step with the one-rank paths (torch's linears, no all-reduce "
            "over a group of one, the lone layer forward, no DDP wrapper), as trained",
            "result": f"{ours:,.0f} tok/s",
            "baseline": f"the same step through megatron's linear Functions, layer forward and "
            f"DistributedDataParallel: {rates['megatron_paths'][0]:,.0f} tok/s",
            "ratio": ours / rates["megatron_paths"][0],
            "unit": "megatron's own path's throughput",
            "target": "",
        },
    ]


if __name__ == "__main__":
    from bench.run import print_table

    print_table(run(quick="--quick" in sys.argv))
