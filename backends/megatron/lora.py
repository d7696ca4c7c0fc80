"""Low-rank adapters on megatron-core's parallel linear layers.

Each targeted layer gets two parameters, ``lora_A`` ``[r, in]`` and ``lora_B`` ``[out, r]``,
registered on the layer itself (so base weight names do not change) and added to its
output by a forward hook: ``y = W x + (alpha / r) B A dropout(x)``.

Under tensor parallelism the adapter is split like its layer. On a column-parallel layer
(``linear_qkv``, ``linear_fc1``) the input is whole: ``A`` is replicated (its gradient
summed over the tensor-parallel group) and ``B`` split by output rows. On a row-parallel layer (``linear_proj``, ``linear_fc2``) the input is
split: ``A`` is split by input columns, its partial products summed over the
tensor-parallel group, and ``B`` replicated. The split parameters carry megatron's
``tensor_model_parallel``/``partition_dim`` marks, so the canonical gather and load of
``shards.py`` handle them like any other weight.
"""

from __future__ import annotations

import math
from typing import Any

import torch

LAYERS = {
    "qkv": ("self_attention.linear_qkv", "column"),
    "proj": ("self_attention.linear_proj", "row"),
    "fc1": ("mlp.linear_fc1", "column"),
    "fc2": ("mlp.linear_fc2", "row"),
}


def is_adapter(name: str) -> bool:
    return name.endswith((".lora_A", ".lora_B"))


def _targets(model: Any, targets: tuple[str, ...]) -> list[tuple[str, Any, str]]:
    suffixes = {LAYERS[t][0]: LAYERS[t][1] for t in targets}
    out = []
    for name, module in model.named_modules():
        for suffix, kind in suffixes.items():
            if name.endswith(suffix):
                out.append((name, module, kind))
    return out


def _hook(kind: str, scale: float, dropout: float) -> Any:
    from megatron.core.tensor_parallel import (
        copy_to_tensor_model_parallel_region,
        reduce_from_tensor_model_parallel_region,
    )

    def hook(module: Any, args: tuple[Any, ...], output: Any) -> Any:
        if not module.lora_enabled:
            return output
        x = args[0]
        x = torch.nn.functional.dropout(x, dropout, module.training)
        a, b = module.lora_A, module.lora_B
        if kind == "column":
            # A is replicated and each rank's B sees only its slice: summing the
            # gradient of ``x A^T`` over the group gives every rank A's full gradient.
            h = copy_to_tensor_model_parallel_region(x @ a.t().to(x.dtype))
        else:
            h = reduce_from_tensor_model_parallel_region(x @ a.t().to(x.dtype))
        delta = scale * (h @ b.t().to(h.dtype))
        out, bias = output
        return out + delta.to(out.dtype), bias

    return hook


def add_adapters(model: Any, adapter: Any) -> list[str]:
    """Freeze the model and add adapters to the targeted layers; the adapter parameter
    names. ``adapter`` is the spec's `[stage.adapter]` table (rank, alpha, dropout,
    targets). Values start at zero (``B = 0``): load them with ``init_adapters``."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = []
    for name, module, kind in _targets(model, tuple(adapter.targets)):
        out_local, in_local = module.weight.shape
        r = adapter.rank
        a = torch.nn.Parameter(torch.zeros(r, in_local))
        b = torch.nn.Parameter(torch.zeros(out_local, r))
        split = b if kind == "column" else a  # split like the layer's own weight
        split.tensor_model_parallel = True
        split.partition_dim = 0 if kind == "column" else 1
        split.partition_stride = 1
        module.lora_A, module.lora_B = a, b
        module.lora_enabled = True
        module.register_forward_hook(_hook(kind, adapter.alpha / r, adapter.dropout))
        names += [f"{name}.lora_A", f"{name}.lora_B"]
    if not names:
        raise ValueError(f"no layer matches the adapter targets {list(adapter.targets)}")
    return names


def set_enabled(model: Any, enabled: bool) -> None:
    """Switch every adapter on or off (off: the frozen base model, e.g. as a reference)."""
    for module in model.modules():
        if hasattr(module, "lora_enabled"):
            module.lora_enabled = enabled


def init_adapters(model: Any, seed: int, canonical_name: Any = None) -> dict[str, torch.Tensor]:
    """Initial adapter weights with full (unsplit) shapes: ``A`` uniform in
    ``±1/sqrt(in)`` from a generator seeded by the canonical name, ``B`` zero, so the
    adapted model starts as the base and the draw never depends on the layout."""
    from llmbuild.backends.megatron.shards import _name_seed
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    state = {}
    for name, p in model.named_parameters():
        if not is_adapter(name):
            continue
        shape = list(p.shape)
        if getattr(p, "tensor_model_parallel", False):
            shape[p.partition_dim] *= tp
        if name.endswith("lora_B"):
            state[name] = torch.zeros(shape)
        else:
            full = canonical_name(name) if canonical_name else name
            gen = torch.Generator().manual_seed(_name_seed(seed, full))
            bound = 1.0 / math.sqrt(shape[1])
            state[name] = torch.empty(shape).uniform_(-bound, bound, generator=gen)
    return state


def merge(
    base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], scale: float
) -> dict[str, torch.Tensor]:
    """Canonical base weights with canonical adapters folded in: ``W + scale * B A``."""
    merged = dict(base)
    for name in adapter:
        if name.endswith(".lora_A"):
            layer = name[: -len(".lora_A")]
            a, b = adapter[name].double(), adapter[f"{layer}.lora_B"].double()
            w = base[f"{layer}.weight"]
            merged[f"{layer}.weight"] = (w.double() + scale * (b @ a)).to(w.dtype)
    return merged
