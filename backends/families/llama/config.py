"""Llama's ``config.json`` <-> our architecture (llama style: RMSNorm, SwiGLU, RoPE with
Llama 3.1's scaling, grouped-query attention). Torch-free; the llama-like families
(mistral, qwen2, qwen3) build on it."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.families import Unsupported

TRAIN_CONTEXT = 4096
"""seq_len an import fills in when the spec sets none: the checkpoint's context, up to
this (a longer one trains only when asked for)."""


def rope(hf: dict[str, Any], where: str) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, our rope_scaling table) from either form transformers writes:
    ``rope_parameters`` (5.x) or ``rope_theta`` with ``rope_scaling`` (4.x and the Hub).
    Read as transformers reads them: a ``rope_scaling`` table, when there is one, stands
    in place of ``rope_parameters`` (a 5.x file given the scaling a model card says to
    add), its theta then the top-level ``rope_theta`` or the default."""
    settings = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    theta = settings.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = settings.get("rope_type") or settings.get("type") or "default"
    if kind == "default":
        return float(theta), None
    if kind == "linear":
        return float(theta), {"kind": "linear", "factor": float(settings["factor"])}
    if kind == "llama3":
        return float(theta), {
            "kind": "llama3",
            "factor": float(settings["factor"]),
            "low_freq_factor": float(settings.get("low_freq_factor", 1.0)),
            "high_freq_factor": float(settings.get("high_freq_factor", 4.0)),
            "original_max_positions": int(settings.get("original_max_position_embeddings", 8192)),
        }
    raise Unsupported(f"{where}: rope scaling {kind!r} is not supported (default, linear, llama3)")


def _require(hf: dict[str, Any], where: str, key: str, wanted: Any, default: Any) -> None:
    value = hf.get(key, default)
    if value != wanted:
        raise Unsupported(f"{where}: {key} = {value!r} is not supported (only {wanted!r})")


def architecture(hf: dict[str, Any], where: str, family: str = "llama") -> dict[str, Any]:
    """The architecture table of a llama-like checkpoint."""
    _require(hf, where, "hidden_act", "silu", "silu")
    _require(hf, where, "mlp_bias", False, False)
    _require(hf, where, "attention_bias", False, False)
    hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    positions = int(hf.get("max_position_embeddings", 2048))
    theta, scaling = rope(hf, where)
    arch: dict[str, Any] = {
        "style": "llama",
        "family": family,
        "layers": int(hf["num_hidden_layers"]),
        "hidden": hidden,
        "heads": heads,
        "kv_heads": int(hf.get("num_key_value_heads") or heads),
        "ffn_hidden": int(hf["intermediate_size"]),
        "max_positions": positions,
        "norm": "rmsnorm",
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "activation": "swiglu",
        "position": "rope",
        "rope_base": theta,
        "bias": False,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "vocab_size": int(hf["vocab_size"]),
    }
    head_dim = hf.get("head_dim")
    if head_dim and int(head_dim) != hidden // heads:
        arch["head_dim"] = int(head_dim)
    if scaling is not None:
        arch["rope_scaling"] = scaling
    return arch


def rope_parameters(arch: Any) -> dict[str, Any]:
    """transformers 5.x ``rope_parameters`` of our architecture."""
    s = arch.rope_scaling
    if s is None:
        return {"rope_type": "default", "rope_theta": arch.rope_base}
    if s.kind == "linear":
        return {"rope_type": "linear", "rope_theta": arch.rope_base, "factor": s.factor}
    return {
        "rope_type": "llama3",
        "rope_theta": arch.rope_base,
        "factor": s.factor,
        "low_freq_factor": s.low_freq_factor,
        "high_freq_factor": s.high_freq_factor,
        "original_max_position_embeddings": s.original_max_positions,
    }


def common(arch: Any, vocab: int, special: dict[str, int]) -> dict[str, Any]:
    """The settings every llama-like ``transformers`` config takes from us."""
    if arch.activation != "swiglu" or arch.norm != "rmsnorm" or arch.position != "rope":
        raise Unsupported("a llama-like export needs swiglu, rmsnorm and rope")
    if arch.bias:
        raise Unsupported("a llama-like export has no biases on its linear layers (bias = true)")
    return {
        "vocab_size": vocab,
        "hidden_size": arch.hidden,
        "intermediate_size": arch.ffn_hidden,
        "num_hidden_layers": arch.layers,
        "num_attention_heads": arch.heads,
        "num_key_value_heads": arch.kv_heads,
        "head_dim": arch.head_size,
        "max_position_embeddings": arch.positions,
        "rms_norm_eps": arch.norm_eps,
        "tie_word_embeddings": arch.tie_embeddings,
        "rope_parameters": rope_parameters(arch),
        "hidden_act": "silu",
        **special,
    }


def hf_config(arch: Any, vocab: int, special: dict[str, int]) -> Any:
    from transformers import LlamaConfig

    if arch.qkv_biased or arch.qk_norm:
        raise Unsupported("Llama has no q/k/v biases and no q/k norms (see qwen2, qwen3)")
    return LlamaConfig(**common(arch, vocab, special), attention_bias=False, mlp_bias=False)
