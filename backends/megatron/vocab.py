"""How many embedding rows a model has, and which of them stand for tokens. Torch-free:
a stage decides it before any rank imports megatron."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from llmbuild.spec.model import Architecture


def model_vocab(tokenizer_vocab: int, arch: Architecture) -> int:
    """The vocabulary the model's rows stand for: a checkpoint's (``arch.vocab_size``),
    else the tokenizer's. A tokenizer with more tokens than the embedding is an error."""
    if arch.vocab_size is None:
        return tokenizer_vocab
    if tokenizer_vocab > arch.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer_vocab} tokens but the model's embedding only "
            f"{arch.vocab_size} rows (architecture.vocab_size): give it at least "
            f"{tokenizer_vocab}, or, for an imported checkpoint, use the checkpoint's own "
            "tokenizer or one that fits"
        )
    return arch.vocab_size


def padded_vocab(vocab_size: int, arch: Architecture) -> int:
    """The embedding rows: the vocabulary padded to a multiple that never depends on the
    parallel layout (so weights are layout-independent)."""
    m = arch.vocab_multiple
    return -(-vocab_size // m) * m


VOCAB_ROWS = ("embedding.word_embeddings.", "output_layer.")
"""The tensors (by canonical name) with a row per embedding row."""


def counted_parameters(shapes: Mapping[str, Sequence[int]], vocab: int, padded: int) -> int:
    """The weights of tensors of these ``shapes`` but for the embedding's padding rows
    (and the output layer's), which stand for no token: the count transformers gives the
    same model."""
    total = sum(math.prod(shape) for shape in shapes.values())
    extra = padded - vocab
    if extra <= 0:
        return total
    return total - sum(
        extra * math.prod(shape[1:])
        for name, shape in shapes.items()
        if name.startswith(VOCAB_ROWS) and len(shape) and shape[0] == padded
    )
