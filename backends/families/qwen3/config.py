"""Qwen3's ``config.json`` <-> ours: llama plus an RMS norm on each head's q and k, and
a head size of its own."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.families import Unsupported
from llmbuild.backends.families.llama import config as llama


def architecture(hf: dict[str, Any], where: str) -> dict[str, Any]:
    if hf.get("use_sliding_window"):
        raise Unsupported(f"{where}: use_sliding_window = true is not supported")
    arch = {**llama.architecture(hf, where, "qwen3"), "qk_norm": True}
    arch["head_dim"] = int(hf.get("head_dim") or arch["hidden"] // arch["heads"])
    return arch


def hf_config(arch: Any, vocab: int, special: dict[str, int]) -> Any:
    from transformers import Qwen3Config

    if arch.qkv_biased or not arch.qk_norm:
        raise Unsupported("Qwen3 has q/k norms and no q/k/v biases")
    return Qwen3Config(
        **llama.common(arch, vocab, special), attention_bias=False, use_sliding_window=False
    )
