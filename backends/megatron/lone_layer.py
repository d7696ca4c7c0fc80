"""megatron-core's transformer layer, forward at one tensor-parallel rank without its
options checked per call.

``TransformerLayer.forward`` serves every layout and feature megatron has (cross
attention, inference caches, fine-grained offloading, recomputation, CUDA graphs, fp8,
fused kernels, MoE): a call of a small layer on a CPU walks through about 300 Python
calls of checks, identity slots and range markers around the same dozen kernels, and a
small model's step spends several percent of its time there. ``plain_layers`` gives each
layer whose options are settled at build time and need none of that a forward that calls
what megatron's would, in the same order and on the same tensors (its norms, the
``F.linear`` of ``linears.py``, its query/key/value split, rotary embedding, core
attention and bias-dropout-add functions): the same losses, gradients and trained weights
bit for bit (``tests/backends/test_lone_rank.py``).

A call that brings anything else (an inference context, packed sequences, cross
attention, autocast, an attention bias) goes through megatron's own forward, as does a
layer built with other options or whose attention or MLP module has a hook on it; a
linear with a hook on it (a LoRA adapter, pruning's importance measure) is called as a
module, so its hooks run as before.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from llmbuild.backends.megatron.attention import SDPAttention
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
    _yarn_get_concentration_factor_from_config,
)
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer import attention as megatron_attention
from megatron.core.transformer.identity_op import IdentityFuncOp, IdentityOp
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.transformer_layer import TransformerLayer
from megatron.core.utils import make_viewless_tensor

# What megatron's layer takes that only its own forward handles: a call passing any of
# them goes there.
_MEGATRON_ONLY = (
    "context",
    "context_mask",
    "rotary_pos_cos",
    "rotary_pos_sin",
    "rotary_pos_cos_sin",
    "attention_bias",
    "inference_context",
    "inference_params",
    "packed_seq_params",
    "sequence_len_offset",
    "padding_mask",
)
_HANDLED = {"hidden_states", "attention_mask", "rotary_pos_emb", *_MEGATRON_ONLY}

# Config options under which megatron's layer does more than the forward below: each must
# be off (falsy) for a layer to take it.
_OPTIONS_OFF = (
    "sequence_parallel",
    "recompute_granularity",
    "fp8",
    "fp4",
    "fp32_residual_connection",
    "attention_output_gate",
    "bias_activation_fusion",
    "bias_dropout_fusion",
    "use_te_activation_func",
    "fused_single_qkv_rope",
    "no_rope_freq",
    "test_mode",
    "cpu_offloading",
    "fine_grained_activation_offloading",
    "inference_fuse_tp_communication",
    "multi_latent_attention",
    "num_moe_experts",
    "qk_clip",
)


# And the layer's and its attention's own switches (one missing counts as on).
_LAYER_OFF = (
    "is_moe_layer",
    "recompute_input_layernorm",
    "recompute_pre_mlp_layernorm",
    "recompute_mlp",
    "offload_attn_norm",
    "offload_mlp_norm",
)
_ATTENTION_OFF = (
    "checkpoint_core_attention",
    "offload_qkv_linear",
    "offload_core_attention",
    "offload_attn_proj",
)


def _eligible(layer: Any) -> bool:
    config = layer.config
    if (
        config.tensor_model_parallel_size != 1
        or any(getattr(config, name, None) for name in _OPTIONS_OFF)
        or getattr(config, "activation_func_clamp_value", None) is not None
    ):
        return False
    attention, mlp = layer.self_attention, layer.mlp
    return (
        type(layer) is TransformerLayer
        and type(attention) is megatron_attention.SelfAttention
        and type(mlp) is MLP
        and isinstance(attention.core_attention, SDPAttention)
        and type(layer.pre_cross_attn_layernorm) is IdentityOp
        and type(layer.cross_attention) is IdentityOp
        and type(layer.cross_attn_bda) is IdentityFuncOp
        and megatron_attention.SplitAlongDim is None
        and attention.num_attention_heads_per_partition % attention.num_query_groups_per_partition
        == 0
        and not any(getattr(layer, name, True) for name in _LAYER_OFF)
        and not any(getattr(attention, name, True) for name in _ATTENTION_OFF)
    )


def _hooked(module: torch.nn.Module) -> bool:
    """Whether calling ``module`` does more than its class's forward: a hook, or a forward
    of its own set on it."""
    from torch.nn.modules import module as nn_module

    return "forward" in vars(module) or bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
        or nn_module._global_forward_hooks
        or nn_module._global_forward_pre_hooks
        or nn_module._global_backward_hooks
        or nn_module._global_backward_pre_hooks
    )


def _linear(module: Any, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """What ``module(x)`` returns, ``(output, bias left to the caller)``, for a column- or
    row-parallel linear that ``linears.plain_linears`` made plain: its plain
    ``_forward_impl`` (``F.linear``, then the bias), without the layer's per-call
    options."""
    plain = "_forward_impl" in vars(module) and (
        isinstance(module, ColumnParallelLinear)
        or (isinstance(module, RowParallelLinear) and module.explicit_expert_comm)
    )
    if not plain or _hooked(module):
        return module(x)
    if module.skip_bias_add:
        return module._forward_impl(x, module.weight), module.bias
    return module._forward_impl(x, module.weight, bias=module.bias), None


def _attention(layer: Any, x: torch.Tensor, mask: Any, rotary_pos_emb: Any) -> Any:
    """``SelfAttention.forward`` for the call and options ``_eligible`` lets through."""
    att = layer.self_attention
    mixed, _ = _linear(att.linear_qkv, x)
    per_group = att.num_attention_heads_per_partition // att.num_query_groups_per_partition
    dim = att.hidden_size_per_attention_head
    mixed = mixed.view(
        *mixed.size()[:-1], att.num_query_groups_per_partition, (per_group + 2) * dim
    )
    query, key, value = torch.split(mixed, [per_group * dim, dim, dim], dim=3)
    query = query.reshape(query.size(0), query.size(1), -1, dim)
    if att.q_layernorm is not None:
        query = att.q_layernorm(query)
    if att.k_layernorm is not None:
        key = att.k_layernorm(key)
    if rotary_pos_emb is not None:
        if not isinstance(rotary_pos_emb, tuple):
            rotary_pos_emb = (rotary_pos_emb,) * 2
        q_emb, k_emb = rotary_pos_emb
        mscale = _yarn_get_concentration_factor_from_config(att.config)
        cp = att.pg_collection.cp
        if q_emb is not None:
            query = apply_rotary_pos_emb(
                query, q_emb, config=att.config, cu_seqlens=None, mscale=mscale, cp_group=cp
            )
        if k_emb is not None:
            key = apply_rotary_pos_emb(
                key, k_emb, config=att.config, cu_seqlens=None, mscale=mscale, cp_group=cp
            )
    out = att.core_attention(
        query,
        key,
        value,
        mask,
        attn_mask_type=att.attn_mask_type,
        attention_bias=None,
        packed_seq_params=None,
    )
    return _linear(att.linear_proj, out)


def _mlp(layer: Any, x: torch.Tensor) -> Any:
    """``MLP.forward`` without fusions (``_eligible``)."""
    mlp, config = layer.mlp, layer.mlp.config
    hidden, bias = _linear(mlp.linear_fc1, x)
    if bias is not None:
        hidden = hidden + bias
    if config.gated_linear_unit:
        gate, linear = torch.chunk(hidden, 2, dim=-1)
        hidden = config.activation_func(gate) * (linear + config.glu_linear_offset)
    else:
        hidden = mlp.activation_func(hidden)
    return _linear(mlp.linear_fc2, hidden)


def _forward(layer: Any, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    kwargs.pop("dynamic_inference_decode_only", None)
    if (
        args
        or not kwargs.keys() <= _HANDLED
        or any(kwargs.get(name) is not None for name in _MEGATRON_ONLY)
        or torch.is_autocast_enabled("cpu")
        or _hooked(layer.self_attention)
        or _hooked(layer.mlp)
    ):
        return TransformerLayer.forward(layer, *args, **kwargs)
    hidden = kwargs["hidden_states"]
    residual = hidden
    output = _attention(
        layer,
        layer.input_layernorm(hidden),
        kwargs.get("attention_mask"),
        kwargs.get("rotary_pos_emb"),
    )
    with layer.bias_dropout_add_exec_handler():
        hidden = layer.self_attn_bda(layer.training, layer.config.bias_dropout_fusion)(
            output, residual, layer.hidden_dropout
        )
    residual = hidden
    output = _mlp(layer, layer.pre_mlp_layernorm(hidden))
    with layer.bias_dropout_add_exec_handler():
        hidden = layer.mlp_bda(layer.training, layer.config.bias_dropout_fusion)(
            output, residual, layer.hidden_dropout
        )
    return make_viewless_tensor(
        inp=hidden, requires_grad=hidden.requires_grad, keep_graph=True
    ), None


def plain_layers(model: torch.nn.Module, config: Any) -> int:
    """Give every transformer layer of ``model`` the forward above where its options allow
    (one tensor-parallel rank, no sequence parallelism, no recomputation, fusions or
    offloading, on a CPU). Returns how many layers were changed."""
    if torch.cuda.is_available() or config.tensor_model_parallel_size != 1:
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, TransformerLayer) and _eligible(module):
            module.forward = types.MethodType(_forward, module)
            changed += 1
    return changed


def megatron_layers(model: torch.nn.Module) -> int:
    """Undo ``plain_layers``: megatron's own layer forward (for comparing the two).
    Returns how many layers were changed."""
    undone = 0
    for module in model.modules():
        if isinstance(module, TransformerLayer) and "forward" in vars(module):
            del module.forward
            undone += 1
    return undone
