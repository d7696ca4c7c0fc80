"""BERT's ``config.json`` <-> our architecture (bert style: post-norm encoder layers,
learned positions, token types, GELU, tied embeddings). Torch-free."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.families import Unsupported

ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}


def architecture(hf: dict[str, Any], where: str) -> dict[str, Any]:
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise Unsupported(
            f"{where}: a BERT decoder (is_decoder, add_cross_attention) is not supported"
        )
    kind = hf.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise Unsupported(f"{where}: position_embedding_type {kind!r} is not supported (absolute)")
    activation = hf.get("hidden_act", "gelu")
    if activation not in ACTIVATIONS:
        raise Unsupported(
            f"{where}: hidden_act {activation!r} is not supported ({', '.join(ACTIVATIONS)})"
        )
    if not hf.get("tie_word_embeddings", True):
        raise Unsupported(f"{where}: tie_word_embeddings = false is not supported")
    return {
        "style": "bert",
        "family": "bert",
        "layers": int(hf["num_hidden_layers"]),
        "hidden": int(hf["hidden_size"]),
        "heads": int(hf["num_attention_heads"]),
        "kv_heads": int(hf["num_attention_heads"]),
        "ffn_hidden": int(hf["intermediate_size"]),
        "max_positions": int(hf.get("max_position_embeddings", 512)),
        "type_vocab_size": int(hf.get("type_vocab_size", 2)),
        "norm": "layernorm",
        "norm_eps": float(hf.get("layer_norm_eps", 1e-12)),
        "activation": ACTIVATIONS[activation],
        "position": "learned",
        "bias": True,
        "tie_embeddings": True,
        "vocab_size": int(hf["vocab_size"]),
    }


def hf_config(arch: Any, vocab: int, special: dict[str, int]) -> Any:
    from transformers import BertConfig

    if (
        not arch.encoder
        or arch.activation not in ("gelu", "gelu_tanh", "relu")
        or arch.kv_heads != arch.heads
        or arch.head_size * arch.heads != arch.hidden
        or not arch.bias
        or arch.qk_norm
    ):
        raise Unsupported(
            "BERT needs the bert style with gelu (or gelu_tanh, relu), biases, kv_heads = "
            "heads and head size hidden / heads"
        )
    return BertConfig(
        vocab_size=vocab,
        hidden_size=arch.hidden,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        intermediate_size=arch.ffn_hidden,
        hidden_act={"gelu_tanh": "gelu_new"}.get(arch.activation, arch.activation),
        max_position_embeddings=arch.positions,
        type_vocab_size=arch.token_types,
        layer_norm_eps=arch.norm_eps,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        tie_word_embeddings=True,
        **special,
    )
