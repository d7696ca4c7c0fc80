"""The tokenize node's indexed-dataset writer against megatron-core's own builder."""

from __future__ import annotations

import numpy as np
import pytest
from llmbuild.backends.megatron.cpu import apply_cpu_patches
from llmbuild.backends.tokenize.indexed import IndexedWriter


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.uint8])
def test_same_bytes_as_megatron_builder(tmp_path, dtype):
    apply_cpu_patches()
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    batches = [
        [rng.integers(0, 200, size=n).tolist() for n in rng.integers(1, 50, size=k)]
        for k in (7, 1, 30)
    ]
    ours = IndexedWriter(str(tmp_path / "ours"), dtype)
    theirs = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=dtype)
    for batch in batches:
        ours.add(batch)
        for seq in batch:
            theirs.add_document(np.asarray(seq, dtype=dtype), [len(seq)])
    ours.finalize()
    theirs.finalize(str(tmp_path / "theirs.idx"))
    for ext in ("bin", "idx"):
        assert (tmp_path / f"ours.{ext}").read_bytes() == (tmp_path / f"theirs.{ext}").read_bytes()
    data = IndexedDataset(str(tmp_path / "ours"))
    flat = [seq for batch in batches for seq in batch]
    assert len(data) == len(flat)
    assert all(data[i].tolist() == seq for i, seq in enumerate(flat))


def test_empty_dataset_matches_megatron(tmp_path):
    apply_cpu_patches()
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    IndexedWriter(str(tmp_path / "ours"), np.uint16).finalize()
    builder = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.uint16)
    builder.finalize(str(tmp_path / "theirs.idx"))
    assert (tmp_path / "ours.idx").read_bytes() == (tmp_path / "theirs.idx").read_bytes()
    assert (tmp_path / "ours.bin").read_bytes() == b""


def test_unsupported_dtype_is_refused(tmp_path):
    with pytest.raises(ValueError, match="uint32"):
        IndexedWriter(str(tmp_path / "x"), np.uint32)
