"""Qwen2 / Qwen2.5's ``config.json`` <-> ours: llama plus biases on q, k and v."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.families import Unsupported
from llmbuild.backends.families.llama import config as llama


def architecture(hf: dict[str, Any], where: str) -> dict[str, Any]:
    if hf.get("use_sliding_window"):
        raise Unsupported(f"{where}: use_sliding_window = true is not supported")
    return {**llama.architecture(hf, where, "qwen2"), "qkv_bias": True}


def hf_config(arch: Any, vocab: int, special: dict[str, int]) -> Any:
    from transformers import Qwen2Config

    if not arch.qkv_biased or arch.qk_norm:
        raise Unsupported("Qwen2 has biases on q, k and v and no q/k norms")
    return Qwen2Config(**llama.common(arch, vocab, special), use_sliding_window=False)
