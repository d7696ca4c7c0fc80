"""The training loop every rank runs: megatron-core GPTModel, AdamW, gradient
accumulation, tensor parallelism inside the model, data-parallel gradient averaging,
validation, and resumable checkpoints."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def _setup(cfg: dict[str, Any]) -> None:
    from llmbuild.backends.megatron.cpu import apply_cpu_patches

    apply_cpu_patches()
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(cfg["tensor"], cfg["pipeline"])


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name or name.endswith("bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _batch(dataset: Any, indices: list[int]) -> dict[str, Any]:
    import torch

    samples = [dataset[i % len(dataset)] for i in indices]
    return {
        k: torch.stack([s[k] for s in samples])
        for k in ("tokens", "labels", "loss_mask", "position_ids")
    }


def _autocast(precision: str) -> Any:
    """bf16 compute over fp32 master weights (autocast); fp32 runs as is."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")


def _masked_mean(per_token: Any, batch: dict[str, Any]) -> Any:
    mask = batch["loss_mask"]
    return (per_token.float() * mask).sum() / mask.sum().clamp(min=1)


def _loss(model: Any, batch: dict[str, Any], precision: str = "fp32") -> Any:
    import torch.nn.functional as F
    from megatron.core import parallel_state

    with _autocast(precision):
        if parallel_state.get_tensor_model_parallel_world_size() == 1:
            # Whole logits: one fused cross-entropy instead of the vocab-parallel one.
            logits = model(batch["tokens"], batch["position_ids"], None)
            per_token = F.cross_entropy(
                logits.float().flatten(0, 1), batch["labels"].flatten(), reduction="none"
            )
            per_token = per_token.view_as(batch["labels"])
        else:
            per_token = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    mask = batch["loss_mask"]
    return (per_token.float() * mask).sum() / mask.sum().clamp(min=1)


def _save(path: Path, state: dict[str, Any]) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def evaluate(model: Any, dataset: Any, samples: int, micro: int, seq_len: int) -> float:
    """Mean validation loss over the first ``samples`` sequences: the same set whatever
    the layout, chunked into micro batches dealt out to data-parallel ranks (tensor- and
    pipeline-parallel ranks of one replica see the same chunks)."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    rank = parallel_state.get_data_parallel_rank()
    size = parallel_state.get_data_parallel_world_size()
    chunks = [list(range(i, min(i + micro, samples))) for i in range(0, samples, micro)]
    mine = [_batch(dataset, chunk) for chunk in chunks[rank::size]]
    model.eval()
    total, count = torch.zeros(1), torch.zeros(1)
    with torch.no_grad():
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            from llmbuild.backends.megatron.pipeline import pipeline_loss

            if mine:
                total += pipeline_loss(
                    model, mine, seq_len, micro, _masked_mean, forward_only=True
                ) * len(mine)
        else:
            for batch in mine:
                total += _loss(model, batch)
        count += len(mine)
    group = parallel_state.get_data_parallel_group()
    dist.all_reduce(total, group=group)
    dist.all_reduce(count, group=group)
    model.train()
    return float(total / count.clamp(min=1))


def train_ranks(cfg: dict[str, Any], info: Any) -> Path | None:
    """One rank of a pretraining stage. Rank 0 returns the directory with the weights."""
    import torch
    import torch.distributed as dist

    _setup(cfg)
    from llmbuild.backends.megatron.data import build_datasets
    from llmbuild.backends.megatron.model import build_model, transformer_config
    from llmbuild.backends.megatron.schedule import lr_at
    from llmbuild.backends.megatron.shards import (
        canonical_init,
        gather_canonical,
        grad_norm_and_clip,
        load_canonical,
    )
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from safetensors.torch import load_file, save_file

    from llmbuild.spec.model import Architecture
    from llmbuild.spec.stages import Schedule

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
        arch, tensor=cfg["tensor"], pipeline=pp, recompute=cfg.get("recompute", "none")
    )
    model = build_model(arch, cfg["vocab_size"], config, first_stage, last_stage)
    gated = arch.activation == "swiglu"
    if cfg.get("init_weights"):
        init = load_file(cfg["init_weights"])
        if pp > 1:
            init = pipeline.to_local(init, arch.layers, tied)
    else:
        rename = (lambda n: pipeline.canonical_name(n, arch.layers, tied)) if pp > 1 else None
        init = canonical_init(model, arch, seed, rename)
    load_canonical(model, init, gated)
    opt = torch.optim.AdamW(
        _param_groups(model, stage["weight_decay"]),
        lr=stage["lr"],
        betas=tuple(stage["betas"]),
        eps=stage["eps"],
    )
    steps, gbs, micro = stage["steps"], stage["global_batch"], cfg["micro_batch"]
    rank = info.rank
    dp_rank = parallel_state.get_data_parallel_rank()
    dp = parallel_state.get_data_parallel_world_size()
    dp_group = parallel_state.get_data_parallel_group()
    layout = {"tensor": cfg["tensor"], "pipeline": cfg["pipeline"], "data": dp}
    accum = gbs // (micro * dp)
    train, valid = build_datasets(
        cfg["sources"],
        cfg["mixture"],
        arch.seq_len,
        seed,
        cfg["eod"],
        cfg["vocab_size"],
        steps * gbs,
        stage["eval_batches"] * gbs,
        work / "index_cache",
    )
    schedule = Schedule.model_validate(stage["schedule"])
    start, history = 0, []
    # One checkpoint file per tensor-parallel rank (data-parallel replicas share it); a
    # checkpoint written at another layout is not resumed.
    ckpt = work / (
        f"checkpoint-tp{parallel_state.get_tensor_model_parallel_rank()}"
        f"-pp{parallel_state.get_pipeline_model_parallel_rank()}.pt"
    )
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state.get("layout") == layout:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            start, history = state["step"], state["history"]
    progress = cfg.get("progress")
    tokens_per_step = gbs * arch.seq_len
    model.train()
    t0 = time.perf_counter()
    for step in range(start, steps):
        lr = lr_at(step, steps, stage["lr"], schedule)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros(1)
        starts = [step * gbs + dp_rank * (gbs // dp) + m * micro for m in range(accum)]
        if pp > 1:  # micro batches flow through the 1F1B schedule, backward included
            batches = [_batch(train, list(range(i, i + micro))) for i in starts]
            with _autocast(stage["precision"]):
                loss_sum += pipeline.pipeline_loss(
                    model, batches, arch.seq_len, micro, _masked_mean, forward_only=False
                )
            pipeline.sync_tied_embedding_grads(model)
        for i in starts if pp == 1 else ():
            loss = _loss(model, _batch(train, list(range(i, i + micro))), stage["precision"])
            (loss / accum).backward()
            loss_sum += loss.detach() / accum
        if dp > 1:
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, group=dp_group)
                    p.grad /= dp
            dist.all_reduce(loss_sum, group=dp_group)
            loss_sum /= dp
        grad_norm = grad_norm_and_clip(model, stage["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        row = {
            "step": step + 1,
            "loss": float(loss_sum),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_step * (step + 1 - start) / max(elapsed, 1e-9),
        }
        last = step + 1 == steps
        if (cfg["eval_every"] and (step + 1) % cfg["eval_every"] == 0) or last:
            row["val_loss"] = evaluate(
                model, valid or train, stage["eval_batches"] * gbs, micro, arch.seq_len
            )
        history.append(row)
        if rank == 0 and progress is not None:
            val = {"val_loss": round(row["val_loss"], 4)} if "val_loss" in row else {}
            progress.update(
                completed=step + 1,
                total=steps,
                unit="steps",
                loss=round(row["loss"], 4),
                **val,
                force=last,
            )
        if (step + 1) % cfg["checkpoint_every"] == 0 and not last:
            if dp_rank == 0:
                _save(
                    ckpt,
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "rng": torch.get_rng_state(),
                        "step": step + 1,
                        "history": history,
                        "layout": layout,
                    },
                )
            dist.barrier()
            if rank == 0:
                (work / "checkpoint.json").write_text(json.dumps({"step": step + 1}))
    weights = gather_canonical(model, gated)  # every tensor-parallel rank takes part
    if pp > 1:  # and every pipeline stage
        weights = pipeline.gather_stages(weights, arch.layers, tied)
    parallel_state.destroy_model_parallel()  # the process may host other nodes next
    if rank != 0:
        return None
    out = work / "rank0-output"
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"))
    with open(out / "metrics.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    return out
