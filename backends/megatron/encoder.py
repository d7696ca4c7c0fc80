"""The ``bert`` style: an encoder built from megatron-core's GPT stack.

megatron-core's own ``BertModel`` normalises before each sublayer (pre-LN) and has no
norm on its embeddings, so it cannot hold a Hugging Face BERT's weights and give its
logits. The GPT stack can, from layer-spec parts:

- attention without the causal mask (SDPA), with a padding mask for padded batches;
- post-LN layers: the identity in place of the input and pre-MLP norms, and
  bias-dropout-add modules that add the residual, then normalise (``PostNorm``);
- a LayerNorm on the embeddings, which carry token types (``EncoderEmbedding``);
- no final norm; the masked-LM head (dense, GELU, LayerNorm, then the tied decoder with
  its bias) as the output layer (``MlmHead``).

Tensor parallelism is megatron's own: the attention and MLP linears and the decoder are
its parallel layers; the norms, positions, token types and the head's dense layer are
replicated (their gradients agree on every rank).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.models.common.embeddings.language_model_embedding import (
    LanguageModelEmbedding,
)
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec


class PostNorm(torch.nn.Module):
    """Bias, dropout and residual add, then LayerNorm: BERT's ``output.LayerNorm``. Called
    as megatron calls its bias-dropout-add: ``bda(training, fused)(x_with_bias, residual,
    prob)``."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, training: bool, fused: bool) -> Any:
        def add_then_norm(x_with_bias: Any, residual: Any, prob: float) -> Any:
            x, bias = x_with_bias
            if bias is not None:
                x = x + bias
            out = residual + F.dropout(x, p=prob, training=training)
            return self.norm(out)

        return add_then_norm


def encoder_layer(layer: ModuleSpec, hidden: int, eps: float) -> ModuleSpec:
    """The GPT layer spec ``layer`` made a post-LN encoder layer (in place)."""
    sub = layer.submodules
    sub.self_attention.submodules.core_attention.params = {"causal": False}
    sub.input_layernorm = IdentityOp
    sub.pre_mlp_layernorm = IdentityOp
    sub.self_attn_bda = ModuleSpec(module=PostNorm, params={"hidden_size": hidden, "eps": eps})
    sub.mlp_bda = ModuleSpec(module=PostNorm, params={"hidden_size": hidden, "eps": eps})
    return layer


class EncoderEmbedding(LanguageModelEmbedding):
    """Words, positions and token types, summed, then LayerNorm and dropout."""

    def __init__(self, config: Any, vocab_size: int, max_sequence_length: int, types: int) -> None:
        super().__init__(
            config, vocab_size, max_sequence_length, "learned_absolute", num_tokentypes=types
        )
        self.layernorm = torch.nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)

    def forward(self, input_ids: Any, position_ids: Any, tokentype_ids: Any = None) -> Any:
        if tokentype_ids is None:
            tokentype_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        x = x + self.tokentype_embeddings(tokentype_ids)
        x = self.layernorm(x).transpose(0, 1).contiguous()  # [s, b, h]
        return self.embedding_dropout(x)


class MlmHead(torch.nn.Module):
    """BERT's prediction head: dense, GELU and LayerNorm, then the decoder (the word
    embeddings, split over the tensor-parallel ranks by vocabulary) with its own bias.
    Called as GPTModel calls its output layer."""

    def __init__(self, config: Any, vocab_size: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.dense = torch.nn.Linear(h, h)
        self.layernorm = torch.nn.LayerNorm(h, eps=config.layernorm_epsilon)
        self.decoder = tensor_parallel.ColumnParallelLinear(
            h,
            vocab_size,
            config=config,
            init_method=config.init_method,
            bias=True,
            gather_output=False,
            skip_weight_param_allocation=True,
        )

    def forward(self, hidden: Any, weight: Any = None, runtime_gather_output: Any = None) -> Any:
        x = self.layernorm(F.gelu(self.dense(hidden)))
        return self.decoder(x, weight=weight, runtime_gather_output=runtime_gather_output)


class Encoder(GPTModel):
    """GPTModel whose embedding takes token types: ``model(tokens, positions, mask,
    tokentype_ids=...)``; ``mask`` (``[b, 1, 1, s]``, True = padding) hides padding."""

    def forward(  # type: ignore[override]
        self,
        input_ids: Any,
        position_ids: Any,
        attention_mask: Any = None,
        labels: Any = None,
        tokentype_ids: Any = None,
        **kwargs: Any,
    ) -> Any:
        embedded = self.embedding(input_ids, position_ids, tokentype_ids)
        return super().forward(
            input_ids, position_ids, attention_mask, decoder_input=embedded, labels=labels, **kwargs
        )


def make_encoder(model: Encoder, config: Any, vocab_size: int, arch: Any) -> Encoder:
    """Fit a freshly built ``Encoder``'s embedding and output layer to the bert style."""
    model.embedding = EncoderEmbedding(config, vocab_size, arch.positions, arch.token_types)
    model.output_layer = MlmHead(config, vocab_size)
    return model
