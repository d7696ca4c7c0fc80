"""GPT-2's ``config.json`` <-> our architecture (gpt2 style: LayerNorm, GELU, learned
positions, biases, tied embeddings). Torch-free."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.families import Unsupported

ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}


def architecture(hf: dict[str, Any], where: str) -> dict[str, Any]:
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(key):
            raise Unsupported(f"{where}: {key} = true is not supported")
    if not hf.get("scale_attn_weights", True):
        raise Unsupported(f"{where}: scale_attn_weights = false is not supported")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise Unsupported(
            f"{where}: activation_function {activation!r} is not supported ({', '.join(ACTIVATIONS)})"
        )
    hidden = int(hf["n_embd"])
    return {
        "style": "gpt2",
        "family": "gpt2",
        "layers": int(hf["n_layer"]),
        "hidden": hidden,
        "heads": int(hf["n_head"]),
        "kv_heads": int(hf["n_head"]),
        "ffn_hidden": int(hf.get("n_inner") or 4 * hidden),
        "max_positions": int(hf["n_positions"]),
        "norm": "layernorm",
        "norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
        "activation": ACTIVATIONS[activation],
        "position": "learned",
        "bias": True,
        "norm_bias": True,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
        "vocab_size": int(hf["vocab_size"]),
    }


def hf_config(arch: Any, vocab: int, special: dict[str, int]) -> Any:
    from transformers import GPT2Config

    if (
        arch.activation not in ("gelu", "gelu_tanh", "relu")
        or arch.norm != "layernorm"
        or arch.position != "learned"
        or arch.kv_heads != arch.heads
        or arch.head_size * arch.heads != arch.hidden
        or arch.qk_norm
    ):
        raise Unsupported(
            "GPT2LMHeadModel needs gelu (or gelu_tanh, relu), layernorm, learned positions, "
            "kv_heads = heads and head size hidden / heads"
        )
    return GPT2Config(
        vocab_size=vocab,
        n_positions=arch.positions,
        n_embd=arch.hidden,
        n_layer=arch.layers,
        n_head=arch.heads,
        n_inner=arch.ffn_hidden,
        activation_function={"gelu_tanh": "gelu_new"}.get(arch.activation, arch.activation),
        layer_norm_epsilon=arch.norm_eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=arch.tie_embeddings,
        **special,
    )
