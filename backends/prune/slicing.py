"""Structured pruning of megatron-core's canonical weights (the names and layouts a
stage's ``model.safetensors`` holds, at one tensor-parallel rank).

What each dimension touches:

- depth: whole ``decoder.layers.<i>`` blocks, the rest renumbered in order;
- MLP channels: ``linear_fc1`` rows (for SwiGLU the gate's and the up projection's,
  ``[gate; up]``) and ``linear_fc2`` columns;
- attention: whole query groups (a key/value head with the query heads that share it),
  so the ratio of query heads to key/value heads stays; ``linear_qkv`` is grouped as
  ``[group][q heads of the group, k, v][head_dim]`` and ``linear_proj`` reads the query
  heads in order;
- hidden: the channels of the residual stream everywhere they appear (embeddings, every
  norm, the inputs of qkv and fc1, the outputs of proj and fc2, the output layer).

Keep-lists come from ``importance.py``; every list is sorted, so weights keep their order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.*)$")


@dataclass(frozen=True)
class Shape:
    """The dimensions pruning changes, before or after."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn_hidden: int
    gated: bool

    @classmethod
    def of(cls, arch: Any) -> Shape:
        """The shape of an ``[architecture]``."""
        return cls(
            layers=arch.layers,
            hidden=arch.hidden,
            heads=arch.heads,
            kv_heads=arch.kv_heads,
            head_dim=arch.head_size,
            ffn_hidden=arch.ffn_hidden,
            gated=arch.activation == "swiglu",
        )


@dataclass(frozen=True)
class Keep:
    """What survives, as sorted indices into the unpruned model's dimensions."""

    layers: list[int]
    groups: dict[int, list[int]]
    """Query groups kept, per kept layer (by its old index)."""
    channels: dict[int, list[int]]
    """MLP channels kept, per kept layer (by its old index)."""
    hidden: list[int]


def _rows(t: torch.Tensor, index: list[int]) -> torch.Tensor:
    return t.index_select(0, torch.tensor(index, dtype=torch.long))


def _cols(t: torch.Tensor, index: list[int]) -> torch.Tensor:
    return t.index_select(1, torch.tensor(index, dtype=torch.long))


def _qkv_rows(shape: Shape, groups: list[int]) -> list[int]:
    """Rows of ``linear_qkv`` (weight or bias) that belong to the kept query groups."""
    per_group = (shape.heads // shape.kv_heads + 2) * shape.head_dim
    return [g * per_group + r for g in groups for r in range(per_group)]


def _proj_cols(shape: Shape, groups: list[int]) -> list[int]:
    """Columns of ``linear_proj`` (the query heads' outputs) of the kept query groups."""
    width = shape.heads // shape.kv_heads * shape.head_dim
    return [g * width + c for g in groups for c in range(width)]


def _fc1_rows(shape: Shape, channels: list[int]) -> list[int]:
    if not shape.gated:
        return channels
    return channels + [shape.ffn_hidden + c for c in channels]  # [gate; up]


def _layer_tensor(name: str, t: torch.Tensor, shape: Shape, keep: Keep, old: int) -> torch.Tensor:
    hidden = keep.hidden
    groups, channels = keep.groups[old], keep.channels[old]
    if name.endswith(
        ("layernorm.weight", "layernorm.bias", "layer_norm_weight", "layer_norm_bias")
    ):
        if "q_layernorm" in name or "k_layernorm" in name:
            return t  # per head_dim: unchanged
        return t.index_select(0, torch.tensor(hidden, dtype=torch.long))
    if "self_attention.linear_qkv.weight" in name:
        return _cols(_rows(t, _qkv_rows(shape, groups)), hidden)
    if "self_attention.linear_qkv.bias" in name:
        return _rows(t, _qkv_rows(shape, groups))
    if "self_attention.linear_proj.weight" in name:
        return _cols(_rows(t, hidden), _proj_cols(shape, groups))
    if "self_attention.linear_proj.bias" in name or "mlp.linear_fc2.bias" in name:
        return _rows(t, hidden)
    if "mlp.linear_fc1.weight" in name:
        return _cols(_rows(t, _fc1_rows(shape, channels)), hidden)
    if "mlp.linear_fc1.bias" in name:
        return _rows(t, _fc1_rows(shape, channels))
    if "mlp.linear_fc2.weight" in name:
        return _cols(_rows(t, hidden), channels)
    raise ValueError(f"pruning does not know the weight {name!r}")


def prune_state(state: dict[str, torch.Tensor], shape: Shape, keep: Keep) -> dict[str, Any]:
    """The canonical weights of the pruned model."""
    out: dict[str, Any] = {}
    renumber = {old: new for new, old in enumerate(keep.layers)}
    for name, t in state.items():
        match = _LAYER.match(name)
        if match is not None:
            old = int(match.group(1))
            if old not in renumber:
                continue
            rest = match.group(2)
            out[f"decoder.layers.{renumber[old]}.{rest}"] = _layer_tensor(
                rest, t, shape, keep, old
            ).contiguous()
        elif (
            name in ("embedding.word_embeddings.weight", "output_layer.weight")
            or name == "embedding.position_embeddings.weight"
        ):
            out[name] = _cols(t, keep.hidden).contiguous()
        elif name.startswith("decoder.final_layernorm."):
            out[name] = t.index_select(0, torch.tensor(keep.hidden, dtype=torch.long)).contiguous()
        elif name == "output_layer.bias":
            out[name] = t
        else:
            raise ValueError(f"pruning does not know the weight {name!r}")
    return out
