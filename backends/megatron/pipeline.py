"""Pipeline parallelism: each pipeline stage holds a slice of the layers; micro batches
flow through megatron-core's 1F1B schedule. Canonical weight names use global layer
numbers; a stage's own module numbers its layers from zero."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def stage_info(layers: int) -> tuple[int, int, bool, bool]:
    """(first global layer, layers on this stage, is first stage, is last stage)."""
    from megatron.core import parallel_state

    pp = parallel_state.get_pipeline_model_parallel_world_size()
    rank = parallel_state.get_pipeline_model_parallel_rank()
    per = layers // pp
    return rank * per, per, rank == 0, rank == pp - 1


def to_local(state: dict[str, torch.Tensor], layers: int, tied: bool) -> dict[str, torch.Tensor]:
    """The canonical weights this pipeline stage holds, under its local names."""
    offset, per, first, last = stage_info(layers)
    out = {}
    for name, value in state.items():
        m = _LAYER.match(name)
        if m:
            i = int(m.group(1)) - offset
            if 0 <= i < per:
                out[f"decoder.layers.{i}." + name[m.end() :]] = value
        elif name.startswith("embedding."):
            if first:
                out[name] = value
        elif last:  # final norm, output layer
            out[name] = value
    if last and not first and tied:  # the last stage's copy of the shared embedding
        out["output_layer.weight"] = state["embedding.word_embeddings.weight"]
    return out


def canonical_name(name: str, layers: int, tied: bool) -> str:
    """The canonical name of one of this stage's parameters (for seeding its init)."""
    offset, _, first, _ = stage_info(layers)
    m = _LAYER.match(name)
    if m:
        return f"decoder.layers.{int(m.group(1)) + offset}." + name[m.end() :]
    if name == "output_layer.weight" and tied and not first:
        return "embedding.word_embeddings.weight"
    return name


def to_canonical(local: dict[str, torch.Tensor], layers: int, tied: bool) -> dict[str, Any]:
    offset, _, first, _ = stage_info(layers)
    out = {}
    for name, value in local.items():
        m = _LAYER.match(name)
        if m:
            name = f"decoder.layers.{int(m.group(1)) + offset}." + name[m.end() :]
        elif name == "output_layer.weight" and tied and not first:
            continue  # a copy of the first stage's embedding
        out[name] = value
    return out


def gather_stages(local: dict[str, torch.Tensor], layers: int, tied: bool) -> dict[str, Any]:
    """Every stage's weights, under canonical names, on every pipeline rank."""
    from megatron.core import parallel_state

    mine = to_canonical(local, layers, tied)
    parts: list[Any] = [None] * parallel_state.get_pipeline_model_parallel_world_size()
    dist.all_gather_object(parts, mine, group=parallel_state.get_pipeline_model_parallel_group())
    return {k: v for part in parts for k, v in part.items()}


def pipeline_loss(
    model: Any,
    batches: list[dict[str, Any]],
    seq_len: int,
    micro: int,
    loss_of: Callable[[Any, dict[str, Any]], Any],
    forward_only: bool,
) -> float:
    """Run micro batches through the schedule (forward and backward unless
    ``forward_only``); the mean loss, known on the last stage, sent to every stage."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    queue = iter(batches)

    def forward_step(data_iterator: Any, module: Any) -> tuple[Any, Callable[..., Any]]:
        batch = next(queue)
        output = module(
            batch["tokens"],
            batch["position_ids"],
            batch.get("attention_mask"),
            labels=batch["labels"],
        )

        def loss_func(per_token: Any) -> tuple[Any, dict[str, Any]]:
            loss = loss_of(per_token, batch)
            # The schedule divides the returned loss in place by the number of micro
            # batches (for the gradients): report an independent copy.
            return loss, {"loss": loss.detach().clone()}

        return output, loss_func

    results = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=None,
        model=[model],
        num_microbatches=len(batches),
        seq_length=seq_len,
        micro_batch_size=micro,
        forward_only=forward_only,
    )
    total = torch.zeros(1)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        total += sum(float(r["loss"]) for r in results) / len(batches)
    dist.broadcast(
        total,
        src=parallel_state.get_pipeline_model_parallel_last_rank(),
        group=parallel_state.get_pipeline_model_parallel_group(),
    )
    return float(total)
