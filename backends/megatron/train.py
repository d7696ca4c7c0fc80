"""The training loop every rank runs, for every stage kind: megatron-core GPTModel,
gradient accumulation, tensor parallelism inside the model, pipeline parallelism
(``pipeline.py``), megatron's data parallelism and optimizer (``data_parallel.py``),
validation, and resumable checkpoints (``checkpoint.py``). What is optimised comes from
``objectives.py`` (and ``grpo.py``); LoRA adapters from ``lora.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def _setup(cfg: dict[str, Any]) -> None:
    from llmbuild.backends.megatron.cpu import apply_cpu_patches

    apply_cpu_patches()
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(cfg["tensor"], cfg["pipeline"])


def _weights(ref: dict[str, str | None] | None) -> dict[str, Any] | None:
    from llmbuild.backends.megatron.weights import load_stage

    if not ref:
        return None
    return load_stage(Path(ref["dir"]), Path(ref["base"]) if ref.get("base") else None)


def _frozen_model(
    arch: Any, cfg: dict[str, Any], config: Any, state: dict[str, Any], head: bool = False
) -> Any:
    """A second model at this layout holding fixed weights: a reference, or with ``head``
    a reward model (``state`` then holds the value head's weights too)."""
    from llmbuild.backends.megatron.model import build_model
    from llmbuild.backends.megatron.shards import load_canonical

    model = build_model(arch, cfg["vocab_size"], config)
    if head:
        _value_head(model, arch, 0)
    load_canonical(model, state, arch.activation == "swiglu")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _value_head(model: Any, arch: Any, seed: int) -> dict[str, Any]:
    """Attach a scalar head to ``model``; its initial weights by canonical name."""
    import torch
    from llmbuild.backends.megatron.objectives import ValueHead
    from llmbuild.backends.megatron.shards import _name_seed

    model.value_head = ValueHead(model, arch.hidden)
    gen = torch.Generator().manual_seed(_name_seed(seed, "value_head.score.weight"))
    return {
        "value_head.score.weight": torch.empty(1, arch.hidden).normal_(
            0.0, arch.init_std, generator=gen
        ),
        "value_head.score.bias": torch.zeros(1),
    }


def _reward_scorer(arch: Any, cfg: dict[str, Any], config: Any, ref: dict[str, Any]) -> Any:
    """A reward stage's model as a function of token sequences -> scores."""
    import torch
    from llmbuild.backends.megatron.posttrain_data import answer_batch
    from safetensors.torch import load_file

    state = {**_weights(ref), **load_file(str(Path(ref["dir"]) / "value_head.safetensors"))}
    model = _frozen_model(arch, cfg, config, state, head=True)

    def score(sequences: list[list[int]]) -> list[float]:
        batch = answer_batch([(seq, []) for seq in sequences], arch.seq_len, cfg["pad"])
        with torch.no_grad():
            return model.value_head.scores(model, batch, "fp32").tolist()

    return score


def _objective(cfg: dict[str, Any], arch: Any, config: Any, model: Any, seed: int) -> Any:
    from llmbuild.backends.megatron import objectives as obj

    stage, kind, sources = cfg["stage"], cfg["stage"]["kind"], cfg["sources"]
    seq_len, pad = arch.seq_len, cfg["pad"]
    if kind == "pretrain":
        from llmbuild.backends.megatron.data import build_datasets

        train, valid = build_datasets(
            sources,
            cfg["mixture"],
            seq_len,
            seed,
            cfg["eod"],
            cfg["vocab_size"],
            stage["steps"] * stage["global_batch"],
            stage["eval_batches"] * stage["global_batch"],
            Path(cfg["work_dir"]) / "index_cache",
        )
        return obj.LanguageModel(
            obj.GptSamples(train), valid and obj.GptSamples(valid), stage["precision"], seq_len
        )
    from llmbuild.backends.megatron import posttrain_data as pd

    source = next(iter(sources))
    if kind in ("sft", "lora"):
        train, valid = (
            pd.ChatSamples(sources, split, seq_len, seed, pad, stage["packing"])
            for split in ("train", "validation")
        )
        what = "conversations"
    elif kind in ("dpo", "reward"):
        train, valid = (
            pd.PairSamples(sources, split, seq_len, pad) for split in ("train", "validation")
        )
        what = "preference pairs"
    else:
        train, valid = (pd.PromptSamples(sources, split) for split in ("train", "validation"))
        what = "prompts"
    if not len(train):
        raise ValueError(f"source {source!r} has no training {what}")
    valid = valid if len(valid) else None
    if kind in ("sft", "lora"):
        return obj.LanguageModel(train, valid, stage["precision"], seq_len)
    if kind == "reward":
        return obj.PairwiseReward(train, valid, model.value_head, stage["precision"])
    if stage.get("adapter") and not cfg.get("reference"):
        reference = obj.Reference(adapted=model)
    else:
        ref_state = _weights(cfg.get("reference") or cfg["init"])
        reference = obj.Reference(model=_frozen_model(arch, cfg, config, ref_state))
    if kind == "dpo":
        return obj.Preference(train, valid, reference, stage)
    from llmbuild.backends.megatron.grpo import GroupPolicy
    from llmbuild.backends.megatron.rewards import Rewards
    from tokenizers import Tokenizer

    models = {
        int(i): _reward_scorer(arch, cfg, config, ref) for i, ref in cfg["reward_models"].items()
    }
    tokenizer = Tokenizer.from_file(cfg["tokenizer_json"])
    stops = {cfg["eod"], *cfg["stops"]}
    return GroupPolicy(
        train, valid, reference, Rewards(stage["rewards"], models), tokenizer, stage, seq_len,
        cfg["vocab_size"], stops, pad, seed,
    )  # fmt: skip


def _adapter_spec(stage: dict[str, Any]) -> Any:
    from llmbuild.spec.stages import LoraAdapter

    return LoraAdapter.model_validate(stage["adapter"]) if stage.get("adapter") else None


def train_ranks(cfg: dict[str, Any], info: Any) -> Path | None:
    """One rank of a training stage. Rank 0 returns the directory with the weights."""
    import torch
    import torch.distributed as dist

    _setup(cfg)
    from llmbuild.backends.megatron import checkpoint as ck
    from llmbuild.backends.megatron import data_parallel, lora
    from llmbuild.backends.megatron.model import build_model, transformer_config
    from llmbuild.backends.megatron.objectives import _dp_reduce, autocast, masked_mean
    from llmbuild.backends.megatron.schedule import lr_at
    from llmbuild.backends.megatron.shards import canonical_init, gather_canonical, load_canonical
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from llmbuild.spec.model import Architecture
    from llmbuild.spec.stages import Schedule
    from llmbuild.store.store import mark_checkpoint

    arch = Architecture.model_validate(cfg["architecture"])
    stage, seed = cfg["stage"], cfg["seed"]
    work = Path(cfg["work_dir"])
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    pp, tied = cfg["pipeline"], arch.tie_embeddings
    first_stage = last_stage = True
    if pp > 1:
        from llmbuild.backends.megatron import pipeline

        _, _, first_stage, last_stage = pipeline.stage_info(arch.layers)
    config = transformer_config(
        arch,
        tensor=cfg["tensor"],
        pipeline=pp,
        recompute=cfg.get("recompute", "none"),
        sequence_parallel=cfg.get("sequence_parallel", False),
    )
    model = build_model(arch, cfg["vocab_size"], config, first_stage, last_stage)
    gated = arch.activation == "swiglu"
    # A pipeline stage's local parameter names -> the whole model's (seeds go by them).
    rename = (lambda n: pipeline.canonical_name(n, arch.layers, tied)) if pp > 1 else None
    init = _weights(cfg.get("init"))
    if init is None:
        init = canonical_init(model, arch, seed, rename)
    elif pp > 1:
        init = pipeline.to_local(init, arch.layers, tied)
    adapter = _adapter_spec(stage)
    if adapter is not None:
        lora.add_adapters(model, adapter)
        init.update(lora.init_adapters(model, seed, rename))
    if stage["kind"] == "reward":
        init.update(_value_head(model, arch, seed))
    load_canonical(model, init, gated)
    objective = _objective(cfg, arch, config, model, seed)
    # Trained through the wrapper; ``model`` keeps the canonical parameter names.
    sharded = bool(cfg.get("distributed_optimizer", False))
    ddp = data_parallel.apply_data_parallel(model, sharded)
    opt = data_parallel.build_optimizer(ddp, stage, sharded)
    steps, gbs, micro = stage["steps"], stage["global_batch"], cfg["micro_batch"]
    rank = info.rank
    dp_rank = parallel_state.get_data_parallel_rank()
    dp = parallel_state.get_data_parallel_world_size()
    dp_group = parallel_state.get_data_parallel_group()
    layout = {
        "tensor": cfg["tensor"],
        "pipeline": cfg["pipeline"],
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
        torch.set_rng_state(state["rng"])
        start, history, initial = state["step"], state["history"], state.get("initial")
    if start == 0 and stage["kind"] != "pretrain":
        initial = objective.evaluate(ddp, eval_samples, micro)  # before any update
    progress = cfg.get("progress")
    tokens_per_step = gbs * arch.seq_len
    ddp.train()
    t0 = time.perf_counter()
    for step in range(start, steps):
        lr = lr_at(step, steps, stage["lr"], schedule)
        data_parallel.set_lr(opt, lr, stage["weight_decay"])
        data_parallel.start_step(ddp, opt)
        loss_sum = torch.zeros(1)
        sums: dict[str, float] = {}
        starts = [step * gbs + dp_rank * (gbs // dp) + m * micro for m in range(accum)]
        if pp > 1:  # micro batches flow through the 1F1B schedule, backward included
            batches = [objective.batch(list(range(i, i + micro))) for i in starts]
            with autocast(stage["precision"]):
                loss_sum += pipeline.pipeline_loss(
                    ddp, batches, arch.seq_len, micro, masked_mean, forward_only=False
                )
        for i in starts if pp == 1 else ():
            loss, metrics = objective.loss(ddp, objective.batch(list(range(i, i + micro))))
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
        row = {
            "step": step + 1,
            "loss": float(loss_sum),
            **sums,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_step * (step + 1 - start) / max(elapsed, 1e-9),
        }
        last = step + 1 == steps
        if (cfg["eval_every"] and (step + 1) % cfg["eval_every"] == 0) or last:
            row.update(objective.evaluate(ddp, eval_samples, micro))
        history.append(row)
        if rank == 0 and progress is not None:
            shown = {k: round(row[k], 4) for k in ("val_loss", "reward", "val_reward") if k in row}
            progress.update(
                completed=step + 1,
                total=steps,
                unit="steps",
                loss=round(row["loss"], 4),
                **shown,
                force=last,
            )
        if (step + 1) % cfg["checkpoint_every"] == 0 and not last:
            if ck.writes_checkpoint(sharded):
                ck.save_checkpoint(
                    ckpt,
                    {
                        "model": model.state_dict(),
                        "optimizer": data_parallel.optimizer_state(opt),
                        "rng": torch.get_rng_state(),
                        "step": step + 1,
                        "history": history,
                        "initial": initial,
                        "layout": layout,
                    },
                )
            dist.barrier()
            if rank == 0:
                mark_checkpoint(work, step + 1)
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
    return out


def _write_weights(out: Path, weights: dict[str, Any], adapter: Any, stage: dict[str, Any]) -> None:
    """``model.safetensors`` (full weights), ``adapter.safetensors`` (LoRA only; the full
    weights then only when merged) and ``value_head.safetensors`` (reward models)."""
    from llmbuild.backends.megatron import lora
    from safetensors.torch import save_file

    head = {k: v for k, v in weights.items() if k.startswith("value_head.")}
    adapters = {k: v for k, v in weights.items() if lora.is_adapter(k)}
    base = {k: v for k, v in weights.items() if k not in head and k not in adapters}
    if head:
        save_file(head, str(out / "value_head.safetensors"))
    if adapter is None:
        save_file(base, str(out / "model.safetensors"))
        return
    save_file(adapters, str(out / "adapter.safetensors"))
    if stage.get("merge"):
        merged = lora.merge(base, adapters, adapter.alpha / adapter.rank)
        save_file(merged, str(out / "model.safetensors"))
