"""Data parallelism and the optimizer, both megatron-core's.

The model is wrapped in megatron's ``DistributedDataParallel``: gradients of every micro
batch accumulate in one contiguous fp32 buffer (``main_grad``) and are averaged over the
data-parallel group once per step, by ``finalize_model_grads``, which also sums the tied
embedding's gradient between the first and last pipeline stages. The optimizer is
megatron's Adam (decoupled weight decay, gradient clipping, the global grad norm). With
``distributed_optimizer`` its state is sharded over the data-parallel ranks: gradients
are reduce-scattered, each rank updates its shard, and the parameters are all-gathered.

Only trainable parameters are wrapped (LoRA's frozen base is left out); frozen reference
and reward models are never wrapped.

A lone rank (one rank in all, the optimizer not sharded) has nothing to reduce: it trains
through ``LoneRank`` instead, and autograd's own gradients feed the same optimizer. That
saves megatron's per-parameter Python hook (which copies each gradient into the buffer),
the buffer's zeroing and a collective over a group of one, every step; the gradients are
the same sums (``0 + g`` is ``g``), and the trained weights bit for bit those of the
wrapped model (``tests/backends/test_lone_rank.py``). Its fp32 optimizer steps through
``_lone_step``: megatron's norm, clipping and update without its Python per parameter.
"""

from __future__ import annotations

from typing import Any

import torch


def _no_decay(param: Any, name: str) -> bool:
    """Biases, norms and other vectors take no weight decay (megatron's own default rule is
    ``ndim == 1 or *.bias``; names containing ``norm`` are added, as before)."""
    return param.ndim < 2 or "norm" in name or name.endswith("bias")


def _ddp_config(distributed_optimizer: bool) -> Any:
    """Gradients reduced in fp32, synchronously (no overlap with backward: gloo has no
    streams to overlap on)."""
    from megatron.core.distributed import DistributedDataParallelConfig

    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        overlap_param_gather=False,
        use_distributed_optimizer=distributed_optimizer,
    )


class LoneRank(torch.nn.Module):
    """The model of a one-rank layout, in place of megatron's DistributedDataParallel:
    what megatron's optimizer asks of a wrapped model (its configs, no gradient buffers),
    and the forward of the model itself."""

    def __init__(self, module: Any) -> None:
        super().__init__()
        self.module = module
        self.config = module.config
        self.ddp_config = _ddp_config(False)
        self.buffers: list[Any] = []
        self.expert_parallel_buffers: list[Any] = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


def apply_data_parallel(model: Any, distributed_optimizer: bool) -> Any:
    """``model`` wrapped in megatron's DistributedDataParallel, or in ``LoneRank`` when
    it is the only rank and the optimizer is not sharded."""
    from megatron.core import parallel_state as ps

    alone = (
        ps.get_data_parallel_world_size() == 1
        and ps.get_tensor_model_parallel_world_size() == 1
        and ps.get_pipeline_model_parallel_world_size() == 1
    )
    if alone and not distributed_optimizer:
        return LoneRank(model)
    return megatron_ddp(model, distributed_optimizer)


def megatron_ddp(model: Any, distributed_optimizer: bool) -> Any:
    """``model`` wrapped in megatron's DistributedDataParallel, at any layout."""
    from megatron.core.distributed import DistributedDataParallel

    return DistributedDataParallel(model.config, _ddp_config(distributed_optimizer), model)


def build_optimizer(ddp: Any, stage: dict[str, Any], distributed_optimizer: bool) -> Any:
    """megatron's optimizer over the wrapped model's trainable parameters, in two groups:
    decayed (``wd_mult`` 1) and not (``wd_mult`` 0). The learning rate and weight decay
    are set per step by ``set_lr``."""
    from megatron.core.optimizer import (
        OptimizerConfig,
        ParamKey,
        ParamWithNamePredicate,
        get_megatron_optimizer,
    )

    beta1, beta2 = stage["betas"]
    config = OptimizerConfig(
        optimizer="adam",
        lr=stage["lr"],
        weight_decay=stage["weight_decay"],
        adam_beta1=beta1,
        adam_beta2=beta2,
        adam_eps=stage["eps"],
        clip_grad=stage["grad_clip"],
        use_distributed_optimizer=distributed_optimizer,
    )
    no_decay = ParamKey(with_name_predicate=ParamWithNamePredicate("no_decay", _no_decay))
    return get_megatron_optimizer(config, [ddp], config_overrides={no_decay: {"wd_mult": 0.0}})


def set_lr(optimizer: Any, lr: float, weight_decay: float) -> None:
    """This step's learning rate (from the stage's schedule) on every parameter group, and
    the weight decay its ``wd_mult`` gives it (megatron's scheduler would do both)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_mult", 1.0)


def start_step(ddp: Any, optimizer: Any) -> None:
    """Zero the accumulated gradients before a step's first micro batch."""
    if not isinstance(ddp, LoneRank):
        ddp.zero_grad_buffer()
    optimizer.zero_grad()


def finish_step(ddp: Any, optimizer: Any) -> float:
    """Reduce the accumulated gradients (data-parallel mean; tied embedding summed over
    pipeline stages), clip them and update; the global gradient norm before clipping."""
    from megatron.core.distributed import finalize_model_grads

    if isinstance(ddp, LoneRank) and _plain_fp32(optimizer):
        return _lone_step(optimizer)
    if not isinstance(ddp, LoneRank):
        finalize_model_grads([ddp])
    _, grad_norm, _ = optimizer.step()
    return float(grad_norm)


def _plain_fp32(optimizer: Any) -> bool:
    """Whether ``optimizer`` is megatron's chain of one fp32 optimizer, on a CPU, with
    nothing on besides clipping (no zero counts, timers or decoupled gradients)."""
    from megatron.core.optimizer.optimizer import ChainedOptimizer, FP32Optimizer

    config = optimizer.config
    return (
        not torch.cuda.is_available()  # the norm as cpu.py computes it, on a CPU
        and type(optimizer) is ChainedOptimizer
        and len(optimizer.chained_optimizers) == 1
        and all(type(o) is FP32Optimizer for o in optimizer.chained_optimizers)
        and optimizer.chained_optimizers[0].optimizer is not None
        and not config.log_num_zeros_in_grad
        and config.timers is None
        and not config.use_precision_aware_optimizer_no_fp8_or_ds_fp8
    )


@torch.no_grad()
def _lone_step(optimizer: Any) -> float:
    """``ChainedOptimizer.step()`` of fp32 optimizers at one rank, without megatron's
    Python per parameter around it (the filters, conversions and collectives over a group
    of one of its norm and clipping): the global norm of the gradients that are neither
    shared nor tensor-parallel duplicates, computed as megatron computes it (the norm of
    the per-tensor norms, squared and rooted again as a Python float); every gradient
    scaled by ``clip / (norm + 1e-6)`` where that is below 1; then each inner torch
    optimizer's step. The same weights, bit for bit (``tests/backends/test_lone_rank.py``)."""
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared

    params = [
        p
        for o in optimizer.chained_optimizers
        for group in o.optimizer.param_groups
        for p in group["params"]
        if p.grad is not None
    ]
    counted = [
        p.grad
        for p in params
        if param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p)
    ]
    total = torch.norm(torch.stack(torch._foreach_norm(counted))) if counted else 0.0
    squared = torch.tensor([float(total)], dtype=torch.float) ** 2.0
    grad_norm = squared.item() ** 0.5
    clip = optimizer.config.clip_grad
    if clip > 0.0 and params and clip / (grad_norm + 1.0e-6) < 1.0:
        torch._foreach_mul_([p.grad for p in params], clip / (grad_norm + 1.0e-6))
    for o in optimizer.chained_optimizers:
        o.optimizer.step()
    return grad_norm


def optimizer_state(optimizer: Any) -> list[Any]:
    """This rank's optimizer state, for an exact resume at the same layout: the inner Adam's
    state dict of each of megatron's chained optimizers. With the distributed optimizer
    that is this data-parallel rank's shard. (Its own ``state_dict`` leaves the per
    parameter state out, and its loader gives every parameter one shared ``step`` tensor,
    which torch's Adam would then advance once per parameter.)"""
    return [
        None if o.optimizer is None else o.optimizer.state_dict()
        for o in optimizer.chained_optimizers
    ]


def load_optimizer_state(optimizer: Any, state: list[Any]) -> None:
    for o, s in zip(optimizer.chained_optimizers, state, strict=True):
        if s is not None:
            o.optimizer.load_state_dict(s)
