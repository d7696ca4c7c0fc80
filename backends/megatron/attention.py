"""Core attention through ``torch.nn.functional.scaled_dot_product_attention``.

Megatron's local ``DotProductAttention`` allocates its buffers on CUDA; this module takes
its place in the layer spec on every device (on GPU SDPA picks flash or memory-efficient
kernels). Inputs are ``[s, b, heads, dim]``; the output is ``[s, b, heads * dim]``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from llmbuild.backends.megatron.cpu import apply_cpu_patches

apply_cpu_patches()  # before megatron is first imported here (a no-op with CUDA)

from megatron.core.transformer.module import MegatronModule  # noqa: E402


class SDPAttention(MegatronModule):
    """Self-attention core with grouped-query support: causal, or bidirectional (an
    encoder's, ``causal=False``) where no mask is given."""

    def __init__(
        self,
        config: Any,
        layer_number: int,
        attn_mask_type: Any,
        attention_type: Any,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        causal: bool = True,
        **_: Any,
    ) -> None:
        super().__init__(config=config)
        self.causal = causal
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: Any = None,
        attention_bias: Any = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        s, b, heads, dim = query.shape
        if key.shape[2] != heads:  # grouped-query attention: share each kv head
            repeat = heads // key.shape[2]
            key = key.repeat_interleave(repeat, dim=2)
            value = value.repeat_interleave(repeat, dim=2)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
        # A given mask (``[b, 1, s, s]`` or an encoder's padding ``[b, 1, 1, s]``, True =
        # hidden, megatron's convention) already holds causality, e.g. packed documents
        # that must not see each other.
        mask = None if attention_mask is None else ~attention_mask
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None and self.causal,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.softmax_scale,
        )
        return out.permute(2, 0, 1, 3).reshape(s, b, heads * dim)
