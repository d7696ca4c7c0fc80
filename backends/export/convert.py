"""Megatron-core weights (one canonical, TP-gathered state dict) and LoRA adapters -> Hugging
Face layouts.

Layout facts (local layer spec): ``linear_qkv`` rows are grouped per query group as
``[q x heads_per_group, k, v]`` blocks of ``head_dim`` rows, not ``[Q; K; V]``;
``linear_fc1`` is ``[gate; up]`` for SwiGLU; megatron's rotary layout (not interleaved)
already matches HF's ``rotate_half``, so q and k need no permutation.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from llmbuild.spec.model import Architecture


def split_qkv(w: torch.Tensor, arch: Architecture) -> tuple[torch.Tensor, ...]:
    """Per-group interleaved qkv rows (weight or bias) -> (Q, K, V) in head order."""
    d, groups = arch.head_dim, arch.kv_heads
    per = arch.heads // groups
    rest = w.shape[1:]
    blocks = w.reshape(groups, per + 2, d, *rest)
    q = blocks[:, :per].reshape(arch.heads * d, *rest)
    k = blocks[:, per].reshape(groups * d, *rest)
    v = blocks[:, per + 1].reshape(groups * d, *rest)
    return q, k, v


def gpt2_state(state: dict[str, torch.Tensor], arch: Architecture, vocab: int) -> dict[str, Any]:
    """For ``GPT2LMHeadModel`` (Conv1D weights are transposed linears)."""
    h = arch.hidden
    out = {
        "transformer.wte.weight": state["embedding.word_embeddings.weight"][:vocab],
        "transformer.wpe.weight": state["embedding.position_embeddings.weight"],
        "transformer.ln_f.weight": state["decoder.final_layernorm.weight"],
        "transformer.ln_f.bias": state["decoder.final_layernorm.bias"],
    }
    zeros = torch.zeros
    for i in range(arch.layers):
        src, dst = f"decoder.layers.{i}.", f"transformer.h.{i}."
        qkv = torch.cat(split_qkv(state[src + "self_attention.linear_qkv.weight"], arch))
        qkv_b = state.get(src + "self_attention.linear_qkv.bias")
        out.update(
            {
                dst + "ln_1.weight": state[src + "input_layernorm.weight"],
                dst + "ln_1.bias": state[src + "input_layernorm.bias"],
                dst + "ln_2.weight": state[src + "pre_mlp_layernorm.weight"],
                dst + "ln_2.bias": state[src + "pre_mlp_layernorm.bias"],
                dst + "attn.c_attn.weight": qkv.T,
                dst + "attn.c_attn.bias": torch.cat(split_qkv(qkv_b, arch))
                if qkv_b is not None
                else zeros(3 * h),
                dst + "attn.c_proj.weight": state[src + "self_attention.linear_proj.weight"].T,
                dst + "attn.c_proj.bias": state.get(
                    src + "self_attention.linear_proj.bias", zeros(h)
                ),
                dst + "mlp.c_fc.weight": state[src + "mlp.linear_fc1.weight"].T,
                dst + "mlp.c_fc.bias": state.get(
                    src + "mlp.linear_fc1.bias", zeros(arch.ffn_hidden)
                ),
                dst + "mlp.c_proj.weight": state[src + "mlp.linear_fc2.weight"].T,
                dst + "mlp.c_proj.bias": state.get(src + "mlp.linear_fc2.bias", zeros(h)),
            }
        )
    if not arch.tie_embeddings:
        out["lm_head.weight"] = state["output_layer.weight"][:vocab]
    return {k: v.contiguous() for k, v in out.items()}


def llama_state(state: dict[str, torch.Tensor], arch: Architecture, vocab: int) -> dict[str, Any]:
    """For ``LlamaForCausalLM``."""
    out = {
        "model.embed_tokens.weight": state["embedding.word_embeddings.weight"][:vocab],
        "model.norm.weight": state["decoder.final_layernorm.weight"],
    }
    for i in range(arch.layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        q, k, v = split_qkv(state[src + "self_attention.linear_qkv.weight"], arch)
        gate, up = state[src + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out.update(
            {
                dst + "input_layernorm.weight": state[src + "input_layernorm.weight"],
                dst + "post_attention_layernorm.weight": state[src + "pre_mlp_layernorm.weight"],
                dst + "self_attn.q_proj.weight": q,
                dst + "self_attn.k_proj.weight": k,
                dst + "self_attn.v_proj.weight": v,
                dst + "self_attn.o_proj.weight": state[src + "self_attention.linear_proj.weight"],
                dst + "mlp.gate_proj.weight": gate,
                dst + "mlp.up_proj.weight": up,
                dst + "mlp.down_proj.weight": state[src + "mlp.linear_fc2.weight"],
            }
        )
    if not arch.tie_embeddings:
        out["lm_head.weight"] = state["output_layer.weight"][:vocab]
    return {k: v.contiguous() for k, v in out.items()}


def hf_config(arch: Architecture, vocab: int, tok: dict[str, int]) -> Any:
    if arch.style == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab,
            n_positions=arch.seq_len,
            n_embd=arch.hidden,
            n_layer=arch.layers,
            n_head=arch.heads,
            n_inner=arch.ffn_hidden,
            activation_function="gelu",
            layer_norm_epsilon=arch.norm_eps,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=arch.tie_embeddings,
            **tok,
        )
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=arch.hidden,
        intermediate_size=arch.ffn_hidden,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads,
        max_position_embeddings=arch.seq_len,
        rms_norm_eps=arch.norm_eps,
        tie_word_embeddings=arch.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_base},
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        **tok,
    )


def to_hf(state: dict[str, torch.Tensor], arch: Architecture, vocab: int) -> dict[str, Any]:
    if arch.style == "gpt2":
        if (arch.activation, arch.norm, arch.position) != (
            "gelu",
            "layernorm",
            "learned",
        ) or arch.kv_heads != arch.heads:
            raise NotImplementedError(
                "GPT2LMHeadModel needs gelu, layernorm, learned positions and kv_heads = heads"
            )
        return gpt2_state(state, arch, vocab)
    if (
        arch.activation != "swiglu"
        or arch.norm != "rmsnorm"
        or arch.position != "rope"
        or arch.bias
    ):
        raise NotImplementedError("a llama-style export needs swiglu, rmsnorm, rope, no bias")
    return llama_state(state, arch, vocab)


HF_ADAPTER_MODULES = {
    "gpt2": {
        "qkv": ("attn.c_attn",),
        "proj": ("attn.c_proj",),
        "fc1": ("mlp.c_fc",),
        "fc2": ("mlp.c_proj",),
    },
    "llama": {
        "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "proj": ("self_attn.o_proj",),
        "fc1": ("mlp.gate_proj", "mlp.up_proj"),
        "fc2": ("mlp.down_proj",),
    },
}
"""The HF modules a megatron LoRA target becomes, per architecture style."""
HF_LAYER_PREFIX = {"gpt2": "transformer.h.{}.", "llama": "model.layers.{}."}
_ADAPTER = re.compile(r"decoder\.layers\.(\d+)\.(.+)\.lora_([AB])")


def _adapter_rows(kind: str, b: torch.Tensor, arch: Architecture) -> tuple[torch.Tensor, ...]:
    """``lora_B`` rows of one megatron layer, split and ordered like the HF modules'
    output rows (the adapter's ``A`` acts on the same input, so it is shared)."""
    if kind == "qkv":
        q, k, v = split_qkv(b, arch)
        return (torch.cat([q, k, v]),) if arch.style == "gpt2" else (q, k, v)
    if kind == "fc1" and arch.style == "llama":
        return tuple(b.chunk(2, dim=0))  # SwiGLU's [gate; up]
    return (b,)


def peft_adapters(
    adapters: dict[str, torch.Tensor], arch: Architecture
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Canonical megatron adapters (``<layer>.lora_A`` ``[r, in]``, ``.lora_B`` ``[out, r]``)
    -> PEFT's state dict (``base_model.model.<module>.lora_A.weight`` ...) and its
    ``target_modules``. GPT-2's Conv1D modules keep ``[r, in]``/``[out, r]`` adapters too:
    PEFT applies them as linears on the input and transposes only when merging."""
    from llmbuild.backends.megatron.lora import LAYERS

    kinds = {suffix: kind for kind, (suffix, _) in LAYERS.items()}
    modules = HF_ADAPTER_MODULES[arch.style]
    out: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for name, a in adapters.items():
        match = _ADAPTER.fullmatch(name)
        if match is None or match.group(2) not in kinds:
            raise ValueError(f"not a LoRA adapter of a known layer: {name!r}")
        if match.group(3) == "B":
            continue
        layer, kind = int(match.group(1)), kinds[match.group(2)]
        b = adapters[name[: -len("lora_A")] + "lora_B"]
        prefix = "base_model.model." + HF_LAYER_PREFIX[arch.style].format(layer)
        for module, rows in zip(modules[kind], _adapter_rows(kind, b, arch), strict=True):
            out[f"{prefix}{module}.lora_A.weight"] = a.float().clone(
                memory_format=torch.contiguous_format
            )
            out[f"{prefix}{module}.lora_B.weight"] = rows.float().clone(
                memory_format=torch.contiguous_format
            )
            targets.add(module)
    return out, sorted(targets)
