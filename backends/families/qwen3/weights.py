"""Qwen3's tensors <-> ours: Llama's, and the per-head q and k norms."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.families.llama.weights import ADAPTER_MODULES, IGNORED, H, L
from llmbuild.backends.families.llama.weights import rules as llama_rules
from llmbuild.backends.families.mapping import Rule, Same

__all__ = ["ADAPTER_MODULES", "IGNORED", "rules"]


def rules(arch: Any) -> list[Rule]:
    return [
        *llama_rules(arch),
        Same(L + "self_attention.q_layernorm.weight", H + "self_attn.q_norm.weight"),
        Same(L + "self_attention.k_layernorm.weight", H + "self_attn.k_norm.weight"),
    ]
