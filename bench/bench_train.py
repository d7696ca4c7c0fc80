"""Training throughput: the megatron backend's model and step (megatron-core GPTModel,
SDPA attention, AdamW) against a plain-PyTorch decoder of identical shape and batch,
measured in the same run in alternating rounds (BENCH_TRAIN_ROUNDS x BENCH_TRAIN_STEPS,
default 7 x 20, 3 x 10 with --quick; tokens/s; ratio = megatron / plain)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LAYERS, HIDDEN, HEADS, SEQ, VOCAB, BATCH = 4, 128, 4, 64, 128, 16
WARMUP = 10


def _plain_model():
    """The plain-PyTorch decoder of ``bench/nanogpt.py`` (the end-to-end baseline)."""
    from bench import nanogpt

    assert (nanogpt.LAYERS, nanogpt.HIDDEN, nanogpt.HEADS, nanogpt.BLOCK) == (
        LAYERS, HIDDEN, HEADS, SEQ,
    )  # fmt: skip
    return nanogpt.GPT(VOCAB)


def _megatron_model():
    from llmbuild.backends.megatron.generate import single_rank

    single_rank()
    from llmbuild.backends.megatron.model import build_model, transformer_config

    from llmbuild.spec.model import Architecture

    arch = Architecture(
        style="gpt2",
        layers=LAYERS,
        hidden=HIDDEN,
        heads=HEADS,
        seq_len=SEQ,
        bias=False,
        tie_embeddings=True,
    )
    return build_model(arch, VOCAB, transformer_config(arch))


def _rates(steps: dict, rounds: int, per_round: int) -> dict[str, float]:
    """Median tokens/s of each step function, measured in alternating rounds so that drift
    in the machine's speed affects both alike."""
    import statistics

    for step in steps.values():
        for _ in range(WARMUP):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            samples[name].append(per_round * BATCH * SEQ / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in samples.items()}


def run(quick: bool = False) -> list[dict]:
    import torch

    rounds = int(os.environ.get("BENCH_TRAIN_ROUNDS", "3" if quick else "7"))
    per_round = int(os.environ.get("BENCH_TRAIN_STEPS", "10" if quick else "20"))

    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ))
    labels = torch.roll(tokens, -1, dims=1)
    position = torch.arange(SEQ).unsqueeze(0).expand(BATCH, -1)

    plain = _plain_model()
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3)

    def plain_step():
        loss = plain(tokens, labels)
        loss.backward()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)

    mega = _megatron_model()
    mega_opt = torch.optim.AdamW(mega.parameters(), lr=1e-3)

    from llmbuild.backends.megatron.objectives import LanguageModel

    objective = LanguageModel(None, None, "fp32", SEQ)  # what a pretrain stage optimises

    batch = {
        "tokens": tokens,
        "labels": labels,
        "position_ids": position,
        "loss_mask": torch.ones(BATCH, SEQ),
    }

    def mega_step():
        loss, _ = objective.loss(mega, batch)  # exactly the training loop's loss
        loss.backward()
        mega_opt.step()
        mega_opt.zero_grad(set_to_none=True)

    rates = _rates({"plain": plain_step, "megatron": mega_step}, rounds, per_round)
    base, ours = rates["plain"], rates["megatron"]
    params = sum(p.numel() for p in mega.parameters())
    return [
        {
            "benchmark": f"training step: megatron-core GPTModel, {params / 1e6:.2f}M params "
            f"({LAYERS} x {HIDDEN}, seq {SEQ}, batch {BATCH}), median of {rounds} rounds",
            "result": f"{ours:,.0f} tok/s",
            "baseline": f"plain PyTorch decoder of identical shape, alternating rounds: "
            f"{base:,.0f} tok/s",
            "ratio": ours / base,
            "unit": "plain PyTorch's throughput",
            "target": "0.9x",
        }
    ]


if __name__ == "__main__":
    from bench.run import print_table

    print_table(run(quick="--quick" in sys.argv))
