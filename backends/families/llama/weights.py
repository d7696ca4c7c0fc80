"""Llama's tensors <-> ours (the llama-like families add theirs to these)."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.families.mapping import GateUp, Qkv, Rule, Same, VocabRows

L, H = "decoder.layers.{i}.", "model.layers.{i}."


def rules(arch: Any) -> list[Rule]:
    out: list[Rule] = [
        VocabRows("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
        Same("decoder.final_layernorm.weight", "model.norm.weight"),
        Same(L + "input_layernorm.weight", H + "input_layernorm.weight"),
        Same(L + "pre_mlp_layernorm.weight", H + "post_attention_layernorm.weight"),
        Qkv(
            L + "self_attention.linear_qkv.weight",
            H + "self_attn.q_proj.weight",
            H + "self_attn.k_proj.weight",
            H + "self_attn.v_proj.weight",
        ),
        Same(L + "self_attention.linear_proj.weight", H + "self_attn.o_proj.weight"),
        GateUp(L + "mlp.linear_fc1.weight", H + "mlp.gate_proj.weight", H + "mlp.up_proj.weight"),
        Same(L + "mlp.linear_fc2.weight", H + "mlp.down_proj.weight"),
    ]
    if not arch.tie_embeddings:
        out.append(VocabRows("output_layer.weight", "lm_head.weight"))
    return out


ADAPTER_MODULES = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "proj": ("self_attn.o_proj",),
    "fc1": ("mlp.gate_proj", "mlp.up_proj"),
    "fc2": ("mlp.down_proj",),
}
IGNORED = (r"rotary_emb\.inv_freq$",)
