"""The ``stage:<name>`` node: train on megatron-core as a group of ranks, then commit the
weights in one layout-independent safetensors file with the model config
(``artifact.py`` reads what this writes)."""

from __future__ import annotations

import json
import math
import shutil
import time
from typing import Any

from llmbuild.backends.megatron.artifact import (
    ADAPTER,
    CONFIG,
    MODEL,
    WEIGHT_FILES,
    StageArtifact,
)
from llmbuild.backends.megatron.config import TrainConfig
from llmbuild.backends.megatron.rank_config import CHECKPOINT_LAYOUT, RankConfig, WeightsRef
from llmbuild.backends.megatron.train import DIVERGED, FACTS, TIMINGS, train_ranks
from llmbuild.backends.tokenizer.artifact import TokenizerArtifact

from llmbuild.errors import UserError
from llmbuild.registry import default_registry
from llmbuild.run.context import RunContext
from llmbuild.spec.base import table_dump

REPORTS = ("metrics.jsonl",)


CURVES = ("loss", "val_loss", "lr", "grad_norm", "tokens_per_s")


def _tensorboard(path: Any, tag: str, rows: list[dict[str, Any]]) -> None:
    """The training curves as TensorBoard event files (tensorboardX, no TensorFlow): one
    event a step with its values, a quarter of the events one a value would take."""
    from tensorboardX import FileWriter
    from tensorboardX.proto.summary_pb2 import Summary

    # A queue that holds every event: writing them does not wait on the writer thread.
    writer = FileWriter(str(path), max_queue=len(rows) + 1)
    try:
        for row in rows:
            values = [
                Summary.Value(tag=f"{tag}/{key}", simple_value=float(row[key]))
                for key in CURVES
                if key in row
            ]
            writer.add_summary(Summary(value=values), row["step"])
    finally:
        writer.close()


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


def _weights_ref(ctx: RunContext[TrainConfig], slot: str) -> WeightsRef | None:
    """Where the weights of the stage a node reads as ``slot`` lie (with its base when
    it holds only adapters)."""
    if slot not in ctx.inputs:
        return None
    ref = StageArtifact.open(ctx.input(slot)).rank_ref()
    return WeightsRef(dir=str(ref["dir"]), base=ref["base"])


def _teacher_architecture(ctx: RunContext[TrainConfig], vocab: int) -> dict[str, Any] | None:
    """A distillation teacher's architecture, from its artifact; its vocabulary must be the
    student's."""
    from llmbuild.errors import UserError

    if "teacher" not in ctx.inputs:
        return None
    teacher = StageArtifact.open(ctx.input("teacher"))
    if teacher.vocab_size != vocab:
        raise UserError(
            f"{ctx.node}: the teacher {teacher.node} has a vocabulary of "
            f"{teacher.vocab_size}, the student {vocab}; they must be one"
        )
    from llmbuild.backends.megatron.sizes import non_embedding_params

    student, master = (
        non_embedding_params(a) for a in (ctx.config.architecture, teacher.architecture)
    )
    if student > master:
        ctx.note(
            f"the student has more parameters than its teacher {teacher.node} ({student:,} "
            f"against {master:,}, without embeddings): distillation usually makes a model "
            "smaller; check the stage's architecture"
        )
    return table_dump(teacher.architecture)


def _data_dirs(ctx: RunContext[TrainConfig]) -> list[Any]:
    """The tokenized sources a stage reads, in slot order."""
    return [a.path for slot, a in sorted(ctx.inputs.items()) if slot.startswith("data:")]


def _labels(ctx: RunContext[TrainConfig]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """A classifier's label names in id order and their loss weights."""
    from llmbuild.backends.megatron import labels

    stage = ctx.config.stage
    if stage.kind != "classify":
        return (), ()
    data = _data_dirs(ctx)
    lists = labels.label_lists(data)
    if lists and not stage.multi_label:
        raise UserError(
            f"{ctx.node} (stage.{stage.name}.data): {lists} texts of source {stage.data!r} "
            "have a list of labels; set multi_label = true to learn any number of labels "
            "per text"
        )
    counts = labels.label_counts(data)
    names = labels.label_names(ctx.node, stage, counts)
    rare = labels.rare_labels(stage, counts["train"], labels.train_texts(data))
    if rare:
        ctx.note(rare)
    return names, labels.class_weights(stage, names)


def rank_config(ctx: RunContext[TrainConfig], tok: TokenizerArtifact, vocab: int) -> RankConfig:
    """What the stage's ranks are given, from its config, kind and inputs."""
    config = ctx.config
    stage, par = config.stage, config.parallelism
    kind = default_registry().kind("stage", stage.kind)
    sources = {
        slot[len("data:") :]: str(a.path)
        for slot, a in ctx.inputs.items()
        if slot.startswith("data:")
    }
    names, weights = _labels(ctx)
    return RankConfig(
        architecture=table_dump(config.architecture),
        stage=stage.model_dump(mode="json", by_alias=True),
        objective=kind.objective,
        seed=config.seed,
        vocab_size=vocab,
        eod=tok.eos_id,
        pad=tok.pad_id,
        bos=tok.bos_id,
        mask=tok.mask_id,
        # GRPO completions end at the chat template's end of turn as well as at eos.
        stops=tuple(tok.stop_ids[1:]),
        tokenizer_json=str(tok.json_path),
        sources=sources,
        mixture=config.mixture,
        work_dir=str(ctx.work_dir),
        tensor=par.tensor,
        # Without pipeline parallelism, the pipeline ranks become data-parallel ranks.
        pipeline=par.pipeline if kind.pipeline else 1,
        micro_batch=par.micro_batch,
        recompute=par.recompute,
        sequence_parallel=par.sequence_parallel and kind.uses_sequence_parallel(stage),
        distributed_optimizer=par.distributed_optimizer,
        eval_every=stage.eval_every,
        checkpoint_every=stage.checkpoint_every,
        log_every=stage.log_every,
        init=_weights_ref(ctx, "from"),
        reference=_weights_ref(ctx, "reference"),
        teacher=_weights_ref(ctx, "teacher"),
        teacher_architecture=_teacher_architecture(ctx, vocab),
        reward_models={
            int(slot.split(":")[1]): ref
            for slot in ctx.inputs
            if slot.startswith("reward:") and (ref := _weights_ref(ctx, slot)) is not None
        },
        labels=names,
        class_weights=weights,
        threads=int(ctx.resources.cpus) if not ctx.resources.gpus else par.rank_cpus(),
        layout={k: getattr(par, k) for k in CHECKPOINT_LAYOUT},
        progress=ctx.progress,
    )


def _parameters(out: Any, vocab: int, padded: int, adapters: bool = False) -> int | None:
    """How many weights the stage holds, its sequence head's included and the embedding's
    padding rows (past ``vocab``, up to ``padded``) not (read from the files' headers);
    None for a stage holding only LoRA adapters. ``adapters``: how many its LoRA adapters
    hold (None without)."""
    from llmbuild.backends.megatron.vocab import counted_parameters
    from safetensors import safe_open

    if not (out / (ADAPTER if adapters else MODEL)).exists():
        return None
    total = 0
    files = [ADAPTER] if adapters else [n for n in WEIGHT_FILES if n != ADAPTER]
    for name in (n for n in files if (out / n).exists()):
        with safe_open(str(out / name), "np") as f:
            names = f.keys()  # the file's tensor names (it is not a mapping)
            shapes = {k: f.get_slice(k).get_shape() for k in names}
        total += counted_parameters(shapes, vocab, padded)
    return total


def _note_full_rank(ctx: RunContext[TrainConfig]) -> None:
    """A LoRA rank of at least the model's width adapts nothing a full fine-tune would not,
    with more weights than the layers it wraps: allowed, rarely meant."""
    adapter, hidden = getattr(ctx.config.stage, "adapter", None), ctx.config.architecture.hidden
    if adapter is not None and adapter.rank >= hidden:
        ctx.note(
            f"LoRA rank {adapter.rank} is at least the model's hidden size ({hidden}): the "
            "adapters are as expressive as the layers they wrap and hold more weights; "
            "ranks of 4 to 64 are usual"
        )


REPEATS = 4
"""Passes over the same tokens past which a stage says it repeats its data: up to about
four, repeated tokens train nearly as well as new ones (Muennighoff et al. 2023)."""


def _note_short_data(ctx: RunContext[TrainConfig], seq_len: int) -> None:
    """Token data shorter than one sequence trains on that data repeated within every
    sample, and a stage may pass over its data many times: allowed, but never silently.
    Only of the kinds that pack text into sequences (a chat, a pair or a labeled text is a
    sample of its own)."""
    stage = ctx.config.stage
    if stage.kind not in ("pretrain", "mlm", "distill"):
        return
    counts = [
        a.record.metrics.get("train_tokens")
        for a in ctx.inputs.values()
        if a.record.name.startswith("tokenize:")
    ]
    tokens = sum(c for c in counts if isinstance(c, int))
    if counts and tokens <= seq_len:
        ctx.note(
            f"the training data holds {tokens} tokens, no more than one sequence "
            f"(seq_len = {seq_len}): every sample repeats it"
        )
        return
    seen = stage.steps * stage.global_batch * seq_len
    if counts and seen > REPEATS * tokens:
        ctx.note(
            f"the stage trains on {seen:,} tokens, {seen / tokens:.0f} passes over its "
            f"{tokens:,} training tokens: past about {REPEATS} passes, repeated tokens teach "
            "less than as many new ones would (a scaling fit's D counts tokens seen)"
        )


def _require_answers(ctx: RunContext[TrainConfig]) -> None:
    """An exact-match reward compares each completion with its prompt's ``answer``: a
    prompt without one could never be rewarded."""
    from llmbuild.errors import UserError

    rewards = getattr(ctx.config.stage, "rewards", None) or []
    if not any(r.kind == "exact_match" for r in rewards):
        return
    for a in ctx.inputs.values():
        missing = a.record.metrics.get("unanswered")
        if a.record.name.startswith("tokenize:") and missing:
            raise UserError(
                f"{ctx.node}: the exact_match reward compares each completion with its "
                f"prompt's `answer`, but {missing} of the {a.record.metrics['documents']} "
                f"prompts of source {a.record.name.removeprefix('tokenize:')!r} have none: "
                "give every prompt an answer, or reward them another way"
            )


def _drop_checkpoint(ctx: RunContext[TrainConfig], note: str) -> None:
    """Remove the resumable checkpoint (its marker first), with a note saying why."""
    from llmbuild.store.store import CHECKPOINT_MARKER

    (ctx.work_dir / CHECKPOINT_MARKER).unlink(missing_ok=True)
    for path in ctx.work_dir.glob("checkpoint-*.pt"):
        path.unlink()
    ctx.note(note)


def _drop_unreadable_checkpoint(ctx: RunContext[TrainConfig]) -> None:
    """A resumable checkpoint that cannot be read whole (a disk that filled, a file
    changed) is removed, and training starts over, saying so."""
    from llmbuild.backends.megatron.checkpoint import unreadable_checkpoints

    from llmbuild.store.store import checkpoint_step

    bad = unreadable_checkpoints(ctx.work_dir)
    if bad:
        step = checkpoint_step(ctx.work_dir)
        at = "" if step is None else f" at step {step}"
        why = f"the resumable checkpoint{at} cannot be read ({', '.join(bad)})"
        _drop_checkpoint(ctx, f"{why}: training starts over")


def _drop_checkpoint_of_another_layout(ctx: RunContext[TrainConfig]) -> None:
    """A resumable checkpoint written at another layout (tensor, pipeline, data, a sharded
    optimizer) cannot be resumed: its ranks hold other slices. It is removed, saying so,
    and training starts over."""
    from llmbuild.store.store import checkpoint_marker, layout_change

    marker = checkpoint_marker(ctx.work_dir)
    change = layout_change(marker, ctx.config.parallelism) if marker is not None else None
    if change is not None:
        _drop_checkpoint(
            ctx,
            f"the resumable checkpoint at step {marker['step']} was written at {change[0]}: "
            f"{change[1]} cannot read it, so training started over",
        )


def run(ctx: RunContext[TrainConfig]) -> None:
    config = ctx.config
    stage = config.stage
    tok_input = ctx.input("tokenizer")
    tok = TokenizerArtifact.open(tok_input.path)
    from llmbuild.backends.megatron.vocab import model_vocab, padded_vocab

    from llmbuild.errors import UserError

    try:
        vocab = model_vocab(tok.info.vocab_size, config.architecture)
    except ValueError as e:
        raise UserError(f"{ctx.node}: {e}") from None
    _note_short_data(ctx, config.architecture.seq_len)
    _note_full_rank(ctx)
    _require_answers(ctx)
    _drop_unreadable_checkpoint(ctx)
    _drop_checkpoint_of_another_layout(ctx)
    mark = time.perf_counter()
    ranks = rank_config(ctx, tok, vocab)
    result = ctx.run_ranks(train_ranks, ranks)
    ctx.timings["ranks"] = round(time.perf_counter() - mark, 3)
    if (result / DIVERGED).exists():
        d = json.loads((result / DIVERGED).read_text())
        raise UserError(
            f"{ctx.node}: training diverged: the loss is {d['loss']} at step {d['step']} "
            f"(lr {d['lr']:.3g}); nothing is kept. Lower lr, warm up longer "
            "(schedule.warmup) or clip gradients harder (grad_clip)"
        )
    if (result / TIMINGS).exists():  # where the ranks' time went
        ctx.timings.update(
            {f"rank0.{k}": v for k, v in json.loads((result / TIMINGS).read_text()).items()}
        )
    for name in (*WEIGHT_FILES, "metrics.jsonl", "initial.json", FACTS):
        if (result / name).exists():
            shutil.copy(result / name, ctx.out_dir / name)
    meta: dict[str, Any] = {
        "architecture": table_dump(config.architecture),
        "vocab_size": vocab,
        "padded_vocab_size": padded_vocab(vocab, config.architecture),
        "tokenizer": {"node": tok_input.record.name, "key": tok_input.record.key},
        "stage": stage.name,
        "kind": stage.kind,
    }
    if ranks.labels:
        from llmbuild.backends.megatron import labels

        meta["labels"] = list(ranks.labels)
        meta["paired"] = labels.paired(_data_dirs(ctx))
        if stage.multi_label:
            meta["multi_label"] = True
    adapter = getattr(stage, "adapter", None)
    if adapter is not None:
        base = ctx.input("from")
        meta["adapter"] = adapter.model_dump(mode="json")
        meta["base"] = {"node": base.record.name, "key": base.record.key}
    (ctx.out_dir / CONFIG).write_text(json.dumps(meta, indent=1, sort_keys=True))
    rows = [json.loads(line) for line in (result / "metrics.jsonl").read_text().splitlines()]
    mark = time.perf_counter()
    _tensorboard(ctx.out_dir / "tensorboard", stage.name, rows)
    _loss_curve(ctx.out_dir / "loss.png", stage.name, rows)
    ctx.timings["curves"] = round(time.perf_counter() - mark, 3)  # TensorBoard's and a PNG
    final = rows[-1]
    rows_of = (vocab, meta["padded_vocab_size"])
    if (parameters := _parameters(ctx.out_dir, *rows_of)) is not None:
        ctx.metrics["parameters"] = parameters
    if (adapters := _parameters(ctx.out_dir, *rows_of, adapters=True)) is not None:
        ctx.metrics["adapter_parameters"] = adapters
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
    if (result / FACTS).exists():  # what the objective found in the data
        ctx.metrics.update(json.loads((result / FACTS).read_text()))
    if ctx.metrics.get("answers_cut_off"):
        ctx.note(
            f"{ctx.metrics['answers_cut_off']} samples have their answer past seq_len = "
            f"{config.architecture.seq_len} tokens and teach nothing: raise "
            "architecture.seq_len or shorten their prompts"
        )
    if ctx.metrics.get("answers_cut_short"):
        ctx.note(
            f"{ctx.metrics['answers_cut_short']} samples have their answer cut short at "
            f"seq_len = {config.architecture.seq_len} tokens: they are learned without their "
            "end (the model may not learn where an answer stops); raise "
            "architecture.seq_len or shorten them"
        )
    if ctx.metrics.get("prompts_too_long"):
        ctx.note(
            f"{ctx.metrics['prompts_too_long']} prompts leave fewer than max_new_tokens = "
            f"{stage.max_new_tokens} of seq_len = {config.architecture.seq_len} tokens: "
            "their completions are sampled and rewarded past seq_len but not trained on "
            "there; raise architecture.seq_len or shorten the prompts"
        )
    _note_no_better_than_uniform(ctx, stage.kind, vocab)
    if (result / "initial.json").exists():  # the measurement before any update
        initial = json.loads((result / "initial.json").read_text())
        ctx.metrics.update({f"initial_{k}": v for k, v in initial.items()})
    if not any(k.startswith("val_") for k in final):
        held_out = "val_reward" if stage.kind == "grpo" else "val_loss"
        documents = sum(
            a.record.metrics.get("documents", 0)
            for a in ctx.inputs.values()
            if a.record.name.startswith("tokenize:")
        )
        advice = (
            f"the split held none of their {documents} documents out: raise [data.split] validation"
            if documents > 1
            else "they hold one document: give a text source a separator that cuts it into "
            "documents, and set [data.split] validation"
        )
        ctx.note(
            f"no validation data: nothing was measured held out ({held_out}), since the "
            f"stage's sources have no validation documents; {advice}"
        )


NEXT_TOKEN_KINDS = ("pretrain", "sft", "lora", "distill", "mlm")
"""Stages whose ``val_loss`` is a cross-entropy over the vocabulary."""


def uniform_loss(vocab: int) -> float:
    """The cross-entropy of predicting every token of the vocabulary alike: ln V."""
    return math.log(max(vocab, 1))


def _note_no_better_than_uniform(ctx: RunContext, kind: str, vocab: int) -> None:
    """A held-out loss at or above ln V predicts no better than guessing every token
    alike: training diverged short of overflowing (a NaN stops it), or learned nothing."""
    loss = ctx.metrics.get("val_loss")
    if kind not in NEXT_TOKEN_KINDS or not isinstance(loss, (int, float)):
        return
    if loss >= uniform_loss(vocab):
        ctx.note(
            f"the held-out loss ({loss:.4g}) is no better than guessing each of the "
            f"{vocab} tokens alike (ln {vocab} = {uniform_loss(vocab):.3f}): training "
            "diverged or learned nothing; lower lr, warm up longer (schedule.warmup) or "
            "clip gradients (grad_clip)"
        )
