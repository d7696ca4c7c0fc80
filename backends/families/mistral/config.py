"""Mistral's ``config.json`` <-> ours: llama, with a sliding attention window (training
stays within it)."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.families import Unsupported
from llmbuild.backends.families.llama import config as llama


def architecture(hf: dict[str, Any], where: str) -> dict[str, Any]:
    arch = llama.architecture(hf, where, "mistral")
    window = hf.get("sliding_window")
    if window:
        arch["sliding_window"] = int(window)
    return arch


def hf_config(arch: Any, vocab: int, special: dict[str, int]) -> Any:
    from transformers import MistralConfig

    if arch.qkv_biased or arch.qk_norm:
        raise Unsupported("Mistral has no q/k/v biases and no q/k norms")
    return MistralConfig(**llama.common(arch, vocab, special), sliding_window=arch.sliding_window)
