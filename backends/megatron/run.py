"""The ``stage:<name>`` node: train on megatron-core as a group of ranks, then commit the
weights in one layout-independent safetensors file with the model config."""

from __future__ import annotations

import json
import shutil
from typing import Any

from llmbuild.backends.megatron.config import TrainConfig
from llmbuild.backends.megatron.train import train_ranks

from llmbuild.spec.checks import NO_PIPELINE, sequence_parallel_applies

REPORTS = ("metrics.jsonl",)
WEIGHT_FILES = ("model.safetensors", "adapter.safetensors", "value_head.safetensors")


def _token_ids(tokenizer_dir: Any, *tokens: str) -> list[int]:
    """The ids of special tokens, read from the tokenizer once."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    ids = [tok.token_to_id(t) for t in tokens]
    for t, i in zip(tokens, ids):
        if i is None:
            raise ValueError(f"the tokenizer has no {t!r} token")
    return ids


def _tensorboard(path: Any, tag: str, rows: list[dict[str, Any]]) -> None:
    """The training curves as TensorBoard event files (tensorboardX, no TensorFlow)."""
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(path)) as writer:
        for row in rows:
            for key in ("loss", "val_loss", "lr", "grad_norm", "tokens_per_s"):
                if key in row:
                    writer.add_scalar(f"{tag}/{key}", row[key], row["step"])


def _loss_curve(path: Any, title: str, rows: list[dict[str, Any]]) -> None:
    """Training and validation loss against steps, as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=0.8, label="train")
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if val:
        ax.plot(*zip(*val), marker="o", lw=1.2, label="validation")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _model_ref(ctx: Any, slot: str) -> dict[str, str | None] | None:
    """Where a stage input's weights lie: its artifact, and its base when it holds only
    LoRA adapters."""
    if slot not in ctx.inputs:
        return None
    base = ctx.inputs.get(f"{slot}_base")
    return {"dir": str(ctx.inputs[slot].path), "base": str(base.path) if base else None}


def run(ctx: Any) -> None:
    config: TrainConfig = ctx.config
    stage, par = config.stage, config.parallelism
    tok = ctx.input("tokenizer")
    info = json.loads((tok.path / "tokenizer_info.json").read_text())
    tokenizer_dir = tok.path / "tokenizer"
    sources = {
        slot[len("data:") :]: str(a.path)
        for slot, a in ctx.inputs.items()
        if slot.startswith("data:")
    }
    # GRPO completions end at the chat template's end of turn as well as at eos.
    ends = ["<|im_end|>"] if stage.kind == "grpo" else []
    eod, pad, *stops = _token_ids(
        tokenizer_dir, info["eos_token"], info.get("pad_token") or info["eos_token"], *ends
    )
    rank_cfg = {
        "architecture": config.architecture.model_dump(mode="json"),
        "stage": stage.model_dump(mode="json", by_alias=True),
        "seed": config.seed,
        "mixture": config.mixture,
        "sources": sources,
        "vocab_size": info["vocab_size"],
        "eod": eod,
        "pad": pad,
        "stops": stops,
        "tokenizer_json": str(tokenizer_dir / "tokenizer.json"),
        "tensor": par.tensor,
        "recompute": par.recompute,
        "sequence_parallel": par.sequence_parallel and sequence_parallel_applies(stage),
        # Without pipeline parallelism, the pipeline ranks become data-parallel ranks.
        "pipeline": 1 if stage.kind in NO_PIPELINE else par.pipeline,
        "micro_batch": par.micro_batch,
        "distributed_optimizer": par.distributed_optimizer,
        "eval_every": stage.eval_every,
        "checkpoint_every": stage.checkpoint_every,
        "work_dir": str(ctx.work_dir),
        "progress": ctx.progress,
        "init": _model_ref(ctx, "from"),
        "reference": _model_ref(ctx, "reference"),
        "reward_models": {
            slot.split(":")[1]: _model_ref(ctx, slot)
            for slot in ctx.inputs
            if slot.startswith("reward:") and not slot.endswith("_base")
        },
    }
    result = ctx.run_ranks(train_ranks, rank_cfg)
    for name in WEIGHT_FILES + ("metrics.jsonl", "initial.json"):
        if (result / name).exists():
            shutil.copy(result / name, ctx.out_dir / name)
    from llmbuild.backends.megatron.model import padded_vocab

    meta: dict[str, Any] = {
        "architecture": config.architecture.model_dump(mode="json"),
        "vocab_size": info["vocab_size"],
        "padded_vocab_size": padded_vocab(info["vocab_size"], config.architecture),
        "tokenizer": {"node": tok.record["name"], "key": tok.record["key"]},
        "stage": stage.name,
        "kind": stage.kind,
    }
    adapter = getattr(stage, "adapter", None)
    if adapter is not None:
        base = ctx.input("from")
        meta["adapter"] = adapter.model_dump(mode="json")
        meta["base"] = {"node": base.record["name"], "key": base.record["key"]}
    (ctx.out_dir / "config.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    rows = [json.loads(line) for line in (result / "metrics.jsonl").read_text().splitlines()]
    _tensorboard(ctx.out_dir / "tensorboard", stage.name, rows)
    _loss_curve(ctx.out_dir / "loss.png", stage.name, rows)
    final = rows[-1]
    ctx.metrics.update(
        {
            "steps": final["step"],
            "loss": final["loss"],
            "tokens_per_s": round(final["tokens_per_s"], 1),
            # the objective's own measures: validation ones, reward, margin, accuracy
            **{
                k: v
                for k, v in final.items()
                if k not in ("step", "lr", "grad_norm", "loss", "tokens_per_s")
            },
        }
    )
    if (result / "initial.json").exists():  # the measurement before any update
        initial = json.loads((result / "initial.json").read_text())
        ctx.metrics.update({f"initial_{k}": v for k, v in initial.items()})
