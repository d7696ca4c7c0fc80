"""BERT's tensors <-> ours (``megatron/encoder.py``): separate query, key and value; each
sublayer's LayerNorm after its residual add (our ``*_bda.norm``); the masked-LM head's
transform and the decoder's bias (its weight is the word embeddings)."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.families.mapping import Qkv, Rule, Same, VocabRows

L, B = "decoder.layers.{i}.", "bert.encoder.layer.{i}."
QKV = ("query", "key", "value")


def _pair(ours: str, theirs: str) -> list[Rule]:
    return [Same(f"{ours}.{p}", f"{theirs}.{p}") for p in ("weight", "bias")]


def rules(arch: Any) -> list[Rule]:
    attn = B + "attention."
    return [
        VocabRows("embedding.word_embeddings.weight", "bert.embeddings.word_embeddings.weight"),
        Same("embedding.position_embeddings.weight", "bert.embeddings.position_embeddings.weight"),
        Same(
            "embedding.tokentype_embeddings.weight", "bert.embeddings.token_type_embeddings.weight"
        ),
        *_pair("embedding.layernorm", "bert.embeddings.LayerNorm"),
        *(
            Qkv(L + f"self_attention.linear_qkv.{p}", *(f"{attn}self.{n}.{p}" for n in QKV))
            for p in ("weight", "bias")
        ),
        *_pair(L + "self_attention.linear_proj", attn + "output.dense"),
        *_pair(L + "self_attn_bda.norm", attn + "output.LayerNorm"),
        *_pair(L + "mlp.linear_fc1", B + "intermediate.dense"),
        *_pair(L + "mlp.linear_fc2", B + "output.dense"),
        *_pair(L + "mlp_bda.norm", B + "output.LayerNorm"),
        *_pair("output_layer.dense", "cls.predictions.transform.dense"),
        *_pair("output_layer.layernorm", "cls.predictions.transform.LayerNorm"),
        VocabRows("output_layer.decoder.bias", "cls.predictions.bias"),
    ]


IGNORED = (
    r"^cls\.predictions\.decoder\.(weight|bias)$",
    r"^bert\.pooler\.",
    r"^cls\.seq_relationship\.",
    r"position_ids$",
)
"""The tied decoder (the word embeddings and ``cls.predictions.bias``), and what a
pretraining checkpoint has beyond the masked-LM model: the pooler and the next-sentence
head (a classify stage starts a pooler of its own)."""

TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
"""transformers' names that share another tensor (absent from the weights we write)."""

CLASSIFIER_NAMES = {
    "classifier.pooler.weight": "bert.pooler.dense.weight",
    "classifier.pooler.bias": "bert.pooler.dense.bias",
    "classifier.score.weight": "classifier.weight",
    "classifier.score.bias": "classifier.bias",
}
"""Our classifier head -> ``BertForSequenceClassification``'s names."""
