"""The architecture table -> megatron-core ``TransformerConfig`` and ``GPTModel``."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from llmbuild.backends.megatron.attention import SDPAttention
from llmbuild.backends.megatron.linears import plain_linears
from llmbuild.backends.megatron.lone_layer import plain_layers
from llmbuild.backends.megatron.vocab import model_vocab, padded_vocab
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from llmbuild.spec.model import Architecture

__all__ = ["build_model", "model_vocab", "padded_vocab", "transformer_config"]


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "gelu": (F.gelu, False),
    "gelu_tanh": (_gelu_tanh, False),
    "swiglu": (F.silu, True),
    "relu": (F.relu, False),
    "squared_relu": (lambda x: F.relu(x) ** 2, False),
}


def rope_inv_freq(arch: Architecture) -> torch.Tensor:
    """The rotary frequencies as transformers computes them, scaling included (megatron's
    own truncates the base to an integer and fixes llama3 scaling's other settings)."""
    dim = arch.head_size
    inv = 1.0 / (arch.rope_base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = arch.rope_scaling
    if scaling is None:
        return inv
    if scaling.kind == "linear":
        return inv / scaling.factor
    low_wavelen = scaling.original_max_positions / scaling.low_freq_factor
    high_wavelen = scaling.original_max_positions / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (scaling.original_max_positions / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def recompute_options(recompute: str) -> dict[str, Any]:
    """Activation recomputation. ``full`` recomputes every layer in backward (same losses,
    less memory); ``selective`` recomputes attention and needs Transformer Engine."""
    if recompute == "full":
        return {
            "recompute_granularity": "full",
            "recompute_method": "uniform",
            "recompute_num_layers": 1,
        }
    if recompute == "selective":
        return {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    return {}


def transformer_config(
    arch: Architecture,
    tensor: int = 1,
    pipeline: int = 1,
    bf16: bool = False,
    recompute: str = "none",
    sequence_parallel: bool = False,
) -> TransformerConfig:
    activation, gated = ACTIVATIONS[arch.activation]
    return TransformerConfig(
        **recompute_options(recompute),
        num_layers=arch.layers,
        hidden_size=arch.hidden,
        num_attention_heads=arch.heads,
        num_query_groups=arch.kv_heads,
        kv_channels=arch.head_size,
        ffn_hidden_size=arch.ffn_hidden,
        normalization="RMSNorm" if arch.norm == "rmsnorm" else "LayerNorm",
        layernorm_epsilon=arch.norm_eps,
        activation_func=activation,
        gated_linear_unit=gated,
        add_bias_linear=arch.bias,
        add_qkv_bias=arch.qkv_biased,
        qk_layernorm=arch.qk_norm,
        hidden_dropout=arch.dropout,
        attention_dropout=arch.dropout,
        init_method_std=arch.init_std,
        tensor_model_parallel_size=tensor,
        # Activations outside attention and MLP split along the sequence over the
        # tensor-parallel ranks (reduce-scatter / all-gather instead of all-reduce).
        sequence_parallel=sequence_parallel,
        pipeline_model_parallel_size=pipeline,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        # gloo sends tensors one by one; batched isend/irecv is for NCCL.
        batch_p2p_comm=torch.cuda.is_available(),
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        # CPU initialisation and no fused kernels: the same weights on every device and
        # layout (fusions need CUDA or Transformer Engine).
        use_cpu_initialization=True,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
    )


class Norm:
    """torch's LayerNorm or RMSNorm, like megatron's ``WrappedTorchNorm`` (same modules,
    same parameter names) but usable with sequence parallelism: each tensor-parallel rank
    then normalises part of the sequence, so the weights are marked for megatron to sum
    their gradients over the ranks."""

    def __new__(
        cls,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        bias: bool = True,
        **_: Any,
    ):
        if config.normalization == "RMSNorm":
            norm = torch.nn.RMSNorm(hidden_size, eps=eps)
        else:  # a LayerNorm without a bias where the architecture has none (norm_bias)
            norm = torch.nn.LayerNorm(hidden_size, eps=eps, bias=bias)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


class QkNorm:
    """The per-head query and key norm (megatron builds it with the head size)."""

    def __new__(cls, hidden_size: int, config: TransformerConfig, eps: float = 1e-5, **_: Any):
        return torch.nn.RMSNorm(hidden_size, eps=eps)


def block_spec(arch: Architecture, config: TransformerConfig) -> TransformerBlockSubmodules:
    """megatron-core's local GPT layer with SDPA core attention and our norms, as the layers
    of this rank's pipeline stage and the final norm."""
    layer = get_gpt_layer_local_spec(
        normalization="RMSNorm" if arch.norm == "rmsnorm" else "LayerNorm",
        qk_layernorm=arch.qk_norm,
    )
    attention = layer.submodules.self_attention.submodules
    attention.core_attention = ModuleSpec(module=SDPAttention)
    if arch.qk_norm:  # per head, over head_dim: RMSNorm as Qwen3's q_norm and k_norm
        attention.q_layernorm = QkNorm
        attention.k_layernorm = QkNorm
    norm = ModuleSpec(module=Norm, params={"bias": arch.norm_bias})
    layer.submodules.input_layernorm = norm
    layer.submodules.pre_mlp_layernorm = norm
    if arch.encoder:  # post-LN layers, no final norm (``encoder.py``)
        from llmbuild.backends.megatron.encoder import encoder_layer

        layer = encoder_layer(layer, arch.hidden, arch.norm_eps)
    return TransformerBlockSubmodules(
        layer_specs=[layer] * get_num_layers_to_build(config),
        layer_norm=None if arch.encoder else norm,
    )


def build_model(
    arch: Architecture,
    vocab_size: int,
    config: TransformerConfig,
    pre_process: bool = True,
    post_process: bool = True,
) -> GPTModel:
    model_class = GPTModel
    if arch.encoder:
        from llmbuild.backends.megatron.encoder import Encoder, make_encoder

        model_class = Encoder
    model = model_class(
        config=config,
        transformer_layer_spec=block_spec(arch, config),
        vocab_size=padded_vocab(vocab_size, arch),
        max_sequence_length=arch.positions,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=arch.tie_embeddings,
        position_embedding_type="rope" if arch.position == "rope" else "learned_absolute",
        rotary_base=int(arch.rope_base),
    )
    plain_linears(model, config)
    plain_layers(model, config)
    if arch.encoder:
        model = make_encoder(model, config, padded_vocab(vocab_size, arch), arch)
    if post_process:
        hide_padded_rows(model.output_layer, vocab_size, padded_vocab(vocab_size, arch))
    if arch.encoder:
        return model
    if arch.position == "rope" and (arch.rope_scaling or not float(arch.rope_base).is_integer()):
        model.rotary_pos_emb.inv_freq = rope_inv_freq(arch)
    return model


PADDED_LOGIT = -1e4
"""The logit of an embedding row past the vocabulary: no probability in any softmax (exp
underflows to 0 in every precision), and finite, so a KL between two models' log-softmaxes
stays finite."""


def hide_padded_rows(output_layer: torch.nn.Module, vocab_size: int, padded: int) -> None:
    """Give the output layer's rows past ``vocab_size`` (megatron pads the vocabulary to a
    multiple) the logit ``PADDED_LOGIT``, with no gradient: whatever reads the logits (the
    loss, perplexity, distillation's KL) sees only the vocabulary's tokens. A checkpoint's
    padded rows are zeros, whose logit 0 would otherwise take a share of every softmax.
    Under tensor parallelism each rank holds a slice of the rows, by rank."""
    from megatron.core import parallel_state

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        logits = output[0] if isinstance(output, tuple) else output
        local = logits.shape[-1]
        start = 0  # the whole vocabulary: one rank, or gathered
        if local != padded and parallel_state.model_parallel_is_initialized():
            start = local * parallel_state.get_tensor_model_parallel_rank()
        first = vocab_size - start  # the first padded row in this slice
        if first >= local:
            return output
        rows = torch.arange(local, device=logits.device) >= max(first, 0)
        logits = logits.masked_fill(rows, PADDED_LOGIT)
        return (logits, *output[1:]) if isinstance(output, tuple) else logits

    output_layer.register_forward_hook(hook)


def canonical_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors by name, contiguous and detached (the committed weights)."""
    return {
        k: v.detach().contiguous().clone()
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")
    }
