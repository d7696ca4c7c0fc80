"""Training batches made at once for the whole batch against megatron-core's
GPTDataset sample by sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from llmbuild.backends.megatron.cpu import apply_cpu_patches
from llmbuild.backends.tokenize.indexed import IndexedWriter

EOD = 1


def _source(path, seed, docs):
    """A tokenize node's output: a train and a validation shard of random documents."""
    rng = np.random.default_rng(seed)
    index = []
    for split, count in (("train", docs), ("validation", 4)):
        rows = [
            rng.integers(2, 50, size=n).tolist() + [EOD] for n in rng.integers(1, 40, size=count)
        ]
        writer = IndexedWriter(str(path / f"{split}-000000"), np.uint16)
        writer.add(rows)
        writer.finalize()
        index.append({"prefix": f"{split}-000000", "split": split, "tokens": sum(map(len, rows))})
    path.mkdir(exist_ok=True)
    (path / "datasets.json").write_text(json.dumps({"datasets": index}))
    return str(path)


@pytest.fixture
def group_of_one(tmp_path):
    """A process group of one rank, as each training rank has (megatron's blended
    dataset builder asks for it)."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def _one_by_one(dataset, indices):
    samples = [dataset[i % len(dataset)] for i in indices]
    return {
        k: torch.stack([s[k] for s in samples])
        for k in ("tokens", "labels", "loss_mask", "position_ids")
    }


@pytest.mark.parametrize("blended", [False, True], ids=["one source", "two sources blended"])
def test_batches_equal_megatrons_samples(tmp_path, blended, group_of_one):
    apply_cpu_patches()
    from llmbuild.backends.megatron.data import build_datasets, sample_batch

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sources = {"a": _source(tmp_path / "a", 0, 60)}
    if blended:
        sources["b"] = _source(tmp_path / "b", 1, 25)
    train, valid = build_datasets(
        sources, {"a": 2.0}, 16, 7, EOD, 50, 300, 10, tmp_path / "cache"
    )  # fmt: skip
    assert type(train).__name__ == ("BlendedDataset" if blended else "GPTDataset")
    rng = np.random.default_rng(3)
    for pad in (-1, 7):  # a pad id megatron masks, as a tokenizer with one gives it
        for d in getattr(train, "datasets", [train]):
            d._pad_token_id = pad
        for size in (1, 5, 12):
            indices = rng.integers(0, 2 * len(train), size=size).tolist()  # wrapping too
            ours, theirs = sample_batch(train, indices), _one_by_one(train, indices)
            for k in theirs:
                assert ours[k].dtype == theirs[k].dtype, k
                assert torch.equal(ours[k], theirs[k]), (k, indices)
        assert (sample_batch(train, list(range(len(train))))["loss_mask"] == 0).any() == (pad == 7)
    assert torch.equal(sample_batch(valid, [0, 3])["tokens"], _one_by_one(valid, [0, 3])["tokens"])
