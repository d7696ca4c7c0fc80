"""Training data: the tokenize nodes' indexed datasets through megatron-core's
``GPTDataset`` and ``BlendedMegatronDatasetBuilder``, blended by source weight."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class _Tokenizer:
    """What GPTDataset asks of a tokenizer: the end-of-document id and an identity."""

    def __init__(self, eod: int, vocab_size: int) -> None:
        self.eod = eod
        self.vocab_size = vocab_size
        self.unique_identifiers = {"class": "llmbuild", "eod": eod, "vocab_size": vocab_size}


def blends(
    sources: dict[str, str], mixture: dict[str, float]
) -> dict[str, tuple[list[str], list[float]]]:
    """Per split: dataset prefixes and weights (a source's weight shared by its shards in
    proportion to their tokens)."""
    out: dict[str, tuple[list[str], list[float]]] = {}
    for split in ("train", "validation"):
        prefixes, weights = [], []
        for name, path in sorted(sources.items()):
            index = json.loads((Path(path) / "datasets.json").read_text())
            parts = [d for d in index["datasets"] if d["split"] == split and d["tokens"]]
            total = sum(d["tokens"] for d in parts)
            for d in parts:
                prefixes.append(str(Path(path) / d["prefix"]))
                weights.append(mixture.get(name, 1.0) * d["tokens"] / total)
        out[split] = (prefixes, weights)
    return out


def build_datasets(
    sources: dict[str, str],
    mixture: dict[str, float],
    seq_len: int,
    seed: int,
    eod: int,
    vocab_size: int,
    train_samples: int,
    valid_samples: int,
    cache: Path,
) -> tuple[Any, Any]:
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    split = blends(sources, mixture)
    valid = split["validation"] if split["validation"][0] else None
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_len,
        blend_per_split=[split["train"], valid, None],
        tokenizer=_Tokenizer(eod, vocab_size),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        path_to_cache=str(cache),
        mmap_bin_files=True,
        create_attention_mask=False,
    )
    train, validation, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_samples if valid else None, None], lambda: True, config
    ).build()
    return train, validation
