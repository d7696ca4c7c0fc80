"""Training data: the tokenize nodes' indexed datasets through megatron-core's
``GPTDataset`` and ``BlendedMegatronDatasetBuilder``, blended by source weight."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


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


def sample_batch(dataset: Any, indices: list[int]) -> dict[str, Any]:
    """The samples at ``indices`` (wrapping around), stacked: ``tokens``, ``labels``,
    ``loss_mask`` and ``position_ids``, as ``torch.stack`` of ``dataset[i]`` gives them.
    GPTDataset's ``__getitem__`` makes a dozen small tensors per sample; here megatron
    reads each sample's tokens and the rest is done once for the batch, to the same
    values (``tests/backends/test_sample_batch.py``). A dataset this does not know takes
    the sample-by-sample way."""
    import torch
    from megatron.core.datasets.blended_dataset import BlendedDataset
    from megatron.core.datasets.gpt_dataset import GPTDataset

    kinds = (BlendedDataset, GPTDataset)
    located = [_locate(dataset, i % len(dataset), *kinds) for i in indices]
    if not all(located):
        samples = [dataset[i % len(dataset)] for i in indices]
        return {
            k: torch.stack([s[k] for s in samples])
            for k in ("tokens", "labels", "loss_mask", "position_ids")
        }
    first = located[0][0]
    if not first.masks_and_position_ids_are_cached:
        first[0]  # megatron's own masks and positions, cached on the dataset
    text = torch.from_numpy(
        np.stack([d._query_document_sample_shuffle_indices(j)[0] for d, j in located])
    ).long()
    tokens, labels = text[:, :-1].contiguous(), text[:, 1:].contiguous()
    loss_mask = first.cached_loss_mask.expand(len(indices), -1).clone()
    position_ids = first.cached_position_ids.expand(len(indices), -1).contiguous()
    pad = first._pad_token_id
    loss_mask[labels == pad] = 0.0
    tokens[tokens == pad] = 0
    labels[labels == pad] = 0
    return {
        "tokens": tokens,
        "labels": labels,
        "loss_mask": loss_mask,
        "position_ids": position_ids,
    }


def _locate(dataset: Any, i: int, BlendedDataset: type, GPTDataset: type) -> tuple[Any, int] | None:
    """The GPTDataset sample that ``dataset[i]`` is (through a BlendedDataset), if its
    samples are what ``sample_batch`` makes: a sequence and one more token, the same
    masks and positions for every sample; else None."""
    if type(dataset) is BlendedDataset:
        if dataset.dataset_index is None:  # loaded on its first sample
            return None
        dataset, i = (
            dataset.datasets[dataset.dataset_index[i]],
            int(dataset.dataset_sample_index[i]),
        )
    if (
        type(dataset) is not GPTDataset
        or not dataset.config.add_extra_token_to_sequence
        or dataset.config.create_attention_mask
        or not dataset.masks_and_position_ids_are_cacheable
    ):
        return None
    return dataset, i
