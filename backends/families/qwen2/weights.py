"""Qwen2's tensors <-> ours: Llama's, and the q/k/v biases grouped like the weights."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.families.llama.weights import ADAPTER_MODULES, IGNORED, H, L
from llmbuild.backends.families.llama.weights import rules as llama_rules
from llmbuild.backends.families.mapping import Qkv, Rule

__all__ = ["ADAPTER_MODULES", "IGNORED", "rules"]


def rules(arch: Any) -> list[Rule]:
    return [
        *llama_rules(arch),
        Qkv(
            L + "self_attention.linear_qkv.bias",
            H + "self_attn.q_proj.bias",
            H + "self_attn.k_proj.bias",
            H + "self_attn.v_proj.bias",
        ),
    ]
