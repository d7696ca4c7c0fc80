"""Tensor-parallel shards <-> the canonical (layout-independent) weights.

Column-parallel weights are split along rows, row-parallel along columns (megatron marks
each split parameter with ``tensor_model_parallel`` and ``partition_dim``). SwiGLU's
``linear_fc1`` is ``[gate; up]`` as a whole but ``[gate_r; up_r]`` on each rank, so its
shards are regrouped.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

# SwiGLU fc1 rows ([gate; up]) and the LoRA matrix producing them.
GATED = ("mlp.linear_fc1.weight", "mlp.linear_fc1.lora_B")


def _split_params(model: Any) -> dict[str, Any]:
    return {
        name: p
        for name, p in model.named_parameters()
        if getattr(p, "tensor_model_parallel", False)
    }


def gather_canonical(model: Any, gated: bool) -> dict[str, torch.Tensor]:
    """The full weights on every rank of the tensor-parallel group (a collective call)."""
    from llmbuild.backends.megatron.model import canonical_state
    from megatron.core import parallel_state

    state = canonical_state(model)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1:
        return state
    group = parallel_state.get_tensor_model_parallel_group()
    for name, p in _split_params(model).items():
        dim = p.partition_dim
        parts = [torch.empty_like(p.data) for _ in range(tp)]
        dist.all_gather(parts, p.data.contiguous(), group=group)
        if gated and name.endswith(GATED):
            halves = [part.chunk(2, dim=dim) for part in parts]
            state[name] = torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=dim)
        else:
            state[name] = torch.cat(parts, dim=dim)
    return state


def _part(value: Any, dim: int, parts: int, index: int) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.chunk(parts, dim=dim)[index]
    return value.part(dim, parts, index)  # a ``weights.Stored``: only this slice is read


def load_canonical(model: Any, state: dict[str, Any], gated: bool) -> None:
    """Load full weights into a (possibly tensor-parallel) model: each rank takes its shard.
    Values are tensors or ``weights.Stored`` references, of which a rank reads only the
    slice it holds."""
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    split = _split_params(model) if tp > 1 else {}
    local = {}
    for name, value in state.items():
        p = split.get(name)
        if p is None:
            local[name] = value if isinstance(value, torch.Tensor) else value.full()
        elif gated and name.endswith(GATED):  # [gate; up] -> [gate_r; up_r]
            dim = p.partition_dim
            gate, up = _part(value, dim, 2 * tp, rank), _part(value, dim, 2 * tp, tp + rank)
            local[name] = torch.cat([gate, up], dim=dim)
        else:
            local[name] = _part(value, p.partition_dim, tp, rank)
    missing, unexpected = model.load_state_dict(local, strict=False)
    if unexpected or [m for m in missing if not m.endswith("_extra_state")]:
        raise RuntimeError(
            f"weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )


def _name_seed(seed: int, name: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest(), "big")


def canonical_init(
    model: Any, arch: Any, seed: int, canonical_name: Any = None
) -> dict[str, torch.Tensor]:
    """Initial weights with tensor-parallel-full shapes under the module's own names, each
    drawn from a generator seeded by the model seed and the parameter's canonical name
    (``canonical_name`` maps a pipeline stage's local names): the same model whatever the parallel layout
    (megatron's own CPU initialisation splits SwiGLU's ``[gate; up]`` differently per
    tensor-parallel size). Megatron's scheme: normal(0, init_std) weights, output
    projections scaled by 1/sqrt(2 x layers), zero biases, unit norm weights."""
    import math

    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    state = {}
    for name, p in model.named_parameters():
        shape = list(p.shape)
        if getattr(p, "tensor_model_parallel", False):
            shape[p.partition_dim] *= tp
        full_name = canonical_name(name) if canonical_name else name
        gen = torch.Generator().manual_seed(_name_seed(seed, full_name))
        if "norm" in name:
            value = torch.zeros(shape) if name.endswith("bias") else torch.ones(shape)
        elif name.endswith("bias"):
            value = torch.zeros(shape)
        else:
            std = arch.init_std
            if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
                std /= math.sqrt(2.0 * arch.layers)
            value = torch.empty(shape).normal_(0.0, std, generator=gen)
        state[name] = value.to(p.dtype)
    return state
