"""The training loop every rank runs, for every stage kind: megatron-core GPTModel,
gradient accumulation, tensor parallelism inside the model, pipeline parallelism
(``pipeline.py``), megatron's data parallelism and optimizer (``data_parallel.py``),
validation, and resumable checkpoints (``checkpoint.py``). What is optimised comes from
the builder the stage's kind names (``objective_builders.py``); LoRA adapters from
``lora.py``."""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path
from typing import Any

from llmbuild.backends.megatron.rank_config import RankConfig

TIMINGS = "timings.json"
"""Rank 0's seconds per phase: setup (megatron's import, the model), data, the first
step, steps, validation, checkpoints, save; and its torch threads."""
DIVERGED = "diverged.json"
"""Written by rank 0 in place of weights when the loss stops being a finite number: the
step, the loss and the learning rate there."""
FACTS = "facts.json"
"""What the objective found in its data (``objective.facts``: texts cut to fit, say),
recorded with the stage's metrics."""


def _setup(cfg: RankConfig) -> None:
    from llmbuild.backends.megatron.cpu import apply_cpu_patches

    apply_cpu_patches()
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(cfg.tensor, cfg.pipeline)


def _adapter_spec(stage: dict[str, Any]) -> Any:
    from llmbuild.backends.megatron.spec import LoraAdapter

    return LoraAdapter.model_validate(stage["adapter"]) if stage.get("adapter") else None


def train_ranks(cfg: RankConfig, info: Any) -> Path | None:
    """One rank of a training stage. Rank 0 returns the directory with the weights, with
    the seconds each phase took (``timings.json``). The steps reuse the memory the step
    before them freed (``heap.py``)."""
    from llmbuild.backends.megatron.heap import keep_freed_memory

    with keep_freed_memory():
        return _train(cfg, info)


def _train(cfg: RankConfig, info: Any) -> Path | None:
    began = time.perf_counter()
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():  # the CPUs this rank holds, whoever started it
        torch.set_num_threads(cfg.threads)
    _setup(cfg)
    from llmbuild.backends.megatron import checkpoint as ck
    from llmbuild.backends.megatron import data_parallel, lora
    from llmbuild.backends.megatron.model import build_model, transformer_config
    from llmbuild.backends.megatron.objective_builders import (
        classifier_head,
        value_head,
        weights_of,
    )
    from llmbuild.backends.megatron.objectives import (
        _dp_reduce,
        autocast,
        masked_mean,
        share_loss_norm,
    )
    from llmbuild.backends.megatron.schedule import lr_at
    from llmbuild.backends.megatron.shards import canonical_init, gather_canonical, load_canonical
    from llmbuild.backends.megatron.spec import Schedule
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from llmbuild.kinds import import_object
    from llmbuild.spec.model import Architecture
    from llmbuild.store.store import mark_checkpoint

    arch = Architecture.model_validate(cfg.architecture)
    stage, seed = cfg.stage, cfg.seed
    work = Path(cfg.work_dir)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    pp, tied = cfg.pipeline, arch.tie_embeddings
    first_stage = last_stage = True
    if pp > 1:
        from llmbuild.backends.megatron import pipeline

        _, _, first_stage, last_stage = pipeline.stage_info(arch.layers)
    config = transformer_config(
        arch,
        tensor=cfg.tensor,
        pipeline=pp,
        recompute=cfg.recompute,
        sequence_parallel=cfg.sequence_parallel,
    )
    model = build_model(arch, cfg.vocab_size, config, first_stage, last_stage)
    gated = arch.activation == "swiglu"
    # A pipeline stage's local parameter names -> the whole model's (seeds go by them).
    rename = (lambda n: pipeline.canonical_name(n, arch.layers, tied)) if pp > 1 else None
    init = weights_of(cfg.init)
    if init is None:
        init = canonical_init(model, arch, seed, rename)
    elif pp > 1:
        init = pipeline.to_local(init, arch.layers, tied)
    adapter = _adapter_spec(stage)
    if adapter is not None:
        lora.add_adapters(model, adapter)
        init.update(lora.init_adapters(model, seed, rename))
    if stage["kind"] == "reward":
        init.update(value_head(model, arch, seed))
    if stage["kind"] == "classify":
        init.update(classifier_head(model, arch, len(cfg.labels), seed))
    load_canonical(model, init, gated)
    timings = {"setup": time.perf_counter() - began}
    mark = time.perf_counter()
    objective = import_object(cfg.objective)(cfg, arch, config, model)
    timings["data"] = time.perf_counter() - mark
    # Trained through the wrapper; ``model`` keeps the canonical parameter names.
    sharded = cfg.distributed_optimizer
    mark = time.perf_counter()
    ddp = data_parallel.apply_data_parallel(model, sharded)
    opt = data_parallel.build_optimizer(ddp, stage, sharded)  # torch imports its compiler here
    timings["optimizer"] = time.perf_counter() - mark
    steps, gbs, micro = stage["steps"], stage["global_batch"], cfg.micro_batch
    rank = info.rank
    dp_rank = parallel_state.get_data_parallel_rank()
    dp = parallel_state.get_data_parallel_world_size()
    dp_group = parallel_state.get_data_parallel_group()
    layout = {
        "tensor": cfg.tensor,
        "pipeline": cfg.pipeline,
        "data": dp,
        "distributed_optimizer": sharded,
    }
    accum = gbs // (micro * dp)
    eval_samples = stage["eval_batches"] * gbs
    schedule = Schedule.model_validate(stage["schedule"])
    start, history, initial = 0, [], None
    ckpt = ck.checkpoint_path(work, sharded)
    state = ck.load_checkpoint(ckpt, layout)
    if state is not None:
        model.load_state_dict(state["model"])
        data_parallel.load_optimizer_state(opt, state["optimizer"])
        ck.restore_random_states(state)
        start, history, initial = state["step"], state["history"], state.get("initial")
    if start == 0 and stage["kind"] != "pretrain":
        mark = time.perf_counter()
        initial = _validate(objective, ddp, eval_samples, micro)  # before any update
        timings["validation"] = time.perf_counter() - mark
    progress = cfg.progress
    tokens_per_step = gbs * arch.seq_len
    ddp.train()
    t0 = time.perf_counter()
    diverged = None
    for step in range(start, steps):
        lr = lr_at(step, steps, stage["lr"], schedule)
        data_parallel.set_lr(opt, lr, stage["weight_decay"])
        data_parallel.start_step(ddp, opt)
        loss_sum = torch.zeros(1)
        sums: dict[str, float] = {}
        starts = [step * gbs + dp_rank * (gbs // dp) + m * micro for m in range(accum)]
        batches = [objective.batch(list(range(i, i + micro))) for i in starts]
        count = getattr(objective, "loss_count", None)
        if count is not None:  # every token (text, completion) of the step weighs alike
            share_loss_norm(batches, count)
        if pp > 1:  # micro batches flow through the 1F1B schedule, backward included
            with autocast(stage["precision"]):
                loss_sum += pipeline.pipeline_loss(
                    ddp, batches, arch.seq_len, micro, masked_mean, forward_only=False
                )
        for batch in batches if pp == 1 else ():
            loss, metrics = objective.loss(ddp, batch)
            (loss / accum).backward()
            loss_sum += loss.detach() / accum
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v / accum
        grad_norm = data_parallel.finish_step(ddp, opt)
        if dp > 1:
            dist.all_reduce(loss_sum, group=dp_group)
            loss_sum /= dp
            if sums:
                sums = _dp_reduce(sums, 1.0)  # the mean over replicas
        elapsed = time.perf_counter() - t0
        if step == start:
            timings["first_step"] = elapsed
        row = {
            "step": step + 1,
            "loss": float(loss_sum),
            **sums,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_step * (step + 1 - start) / max(elapsed, 1e-9),
        }
        last = step + 1 == steps
        if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last:
            mark = time.perf_counter()
            row.update(_validate(objective, ddp, eval_samples, micro))
            timings["validation"] = timings.get("validation", 0.0) + time.perf_counter() - mark
        history.append(row)
        if not math.isfinite(row["loss"]):  # the same on every rank: it is reduced
            diverged = {"step": step + 1, "loss": str(row["loss"]), "lr": lr}
            break
        if rank == 0 and ((step + 1) % cfg.log_every == 0 or last):
            _log_step(work, row, steps)
        if rank == 0 and progress is not None:
            shown = {
                k: _figures(row[k])
                # a distillation's loss mixes in the KL: its cross-entropy is shown too
                for k in ("ce", "val_loss", "reward", "val_reward", "val_accuracy")
                if k in row
            }
            progress.update(
                completed=step + 1,
                total=steps,
                unit="steps",
                loss=_figures(row["loss"]),
                **shown,
                force=last,
            )
        if (step + 1) % cfg.checkpoint_every == 0 and not last:
            if ck.writes_checkpoint(sharded):
                mark = time.perf_counter()
                ck.save_checkpoint(
                    ckpt,
                    {
                        "model": model.state_dict(),
                        "optimizer": data_parallel.optimizer_state(opt),
                        **ck.random_states(),
                        "step": step + 1,
                        "history": history,
                        "initial": initial,
                        "layout": layout,
                    },
                )
                timings["checkpoints"] = (
                    timings.get("checkpoints", 0.0) + time.perf_counter() - mark
                )
            dist.barrier()
            if rank == 0:
                mark_checkpoint(work, step + 1, layout=cfg.layout)
    timings["steps"] = (
        time.perf_counter() - t0 - timings.get("validation", 0.0) - timings.get("checkpoints", 0.0)
    )
    if diverged is not None:  # returned, not raised: a retry would only diverge again
        parallel_state.destroy_model_parallel()
        if rank != 0:
            return None
        out = work / "rank0-output"
        out.mkdir(parents=True, exist_ok=True)
        (out / DIVERGED).write_text(json.dumps(diverged))
        return out
    mark = time.perf_counter()
    weights = gather_canonical(model, gated)  # every tensor-parallel rank takes part
    if pp > 1:  # and every pipeline stage
        weights = pipeline.gather_stages(weights, arch.layers, tied)
    parallel_state.destroy_model_parallel()  # the process may host other nodes next
    if rank != 0:
        return None
    out = work / "rank0-output"
    out.mkdir(parents=True, exist_ok=True)
    _write_weights(out, weights, adapter, stage)
    with open(out / "metrics.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    if initial is not None:
        (out / "initial.json").write_text(json.dumps(initial, sort_keys=True))
    facts = getattr(objective, "facts", None)
    if facts:
        (out / FACTS).write_text(json.dumps(facts, sort_keys=True))
    timings["save"] = time.perf_counter() - mark
    timings["threads"] = torch.get_num_threads()
    (out / TIMINGS).write_text(json.dumps({k: round(v, 3) for k, v in timings.items()}))
    return out


def _figures(value: float) -> float:
    """Four significant figures for the progress line (a loss of 1.8e-08 is not 0)."""
    return float(f"{value:.4g}")


def _log_step(work: Path, row: dict[str, Any], steps: int) -> None:
    """The step's metrics as a line of the node's log (``log_every``), where this rank's
    machine has it."""
    log = work / "node.log"
    if not log.parent.is_dir():
        return
    shown = " ".join(
        f"{k} {v:.4g}" for k, v in row.items() if k != "step" and isinstance(v, (int, float))
    )
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]  # as logging's
    with open(log, "a") as f:
        f.write(f"{stamp} INFO step {row['step']}/{steps} {shown}\n")


def _validate(objective: Any, model: Any, samples: int, micro: int) -> dict[str, float]:
    """The objective's validation measures with dropout off: they are the model's, and
    training draws its dropout masks from the random stream as if none had been taken."""
    model.eval()
    try:
        return objective.evaluate(model, samples, micro)
    finally:
        model.train()


def _write_weights(out: Path, weights: dict[str, Any], adapter: Any, stage: dict[str, Any]) -> None:
    """``model.safetensors`` (full weights), ``adapter.safetensors`` (LoRA only; the full
    weights then only when merged), ``value_head.safetensors`` (reward models) and
    ``classifier.safetensors`` (classifiers)."""
    from llmbuild.backends.megatron import lora
    from llmbuild.backends.megatron.artifact import ADAPTER, CLASSIFIER, MODEL, VALUE_HEAD
    from safetensors.torch import save_file

    heads = {"value_head.": VALUE_HEAD, "classifier.": CLASSIFIER}
    head = {k: v for k, v in weights.items() if k.startswith(tuple(heads))}
    adapters = {k: v for k, v in weights.items() if lora.is_adapter(k)}
    base = {k: v for k, v in weights.items() if k not in head and k not in adapters}
    for prefix, name in heads.items():
        own = {k: v for k, v in head.items() if k.startswith(prefix)}
        if own:
            save_file(own, str(out / name))
    if adapter is None:
        save_file(base, str(out / MODEL))
        return
    save_file(adapters, str(out / ADAPTER))
    if stage.get("merge"):
        merged = lora.merge(base, adapters, adapter.alpha / adapter.rank)
        save_file(merged, str(out / MODEL))
