"""Writing megatron-core's indexed dataset format (.bin/.idx) with numpy alone.

The files are byte-identical to those of megatron-core's ``IndexedDatasetBuilder`` (a
test checks it) and are read with its ``IndexedDataset``. Writing them here keeps the
tokenize workers free of torch and megatron-core, whose import costs a worker about 4.5 s
and 300 MB; and a batch of documents goes to disk in one write instead of one per
document."""

from __future__ import annotations

import struct
from itertools import chain
from typing import Any

import numpy as np

HEADER = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {
    np.uint8: 1,
    np.int8: 2,
    np.int16: 3,
    np.int32: 4,
    np.int64: 5,
    np.float64: 6,
    np.float32: 7,
    np.uint16: 8,
}


class IndexedWriter:
    """One dataset: token sequences appended in batches, one sequence per document."""

    def __init__(self, prefix: str, dtype: Any) -> None:
        self.prefix = prefix
        self.dtype = np.dtype(dtype).type
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"indexed datasets cannot hold {np.dtype(dtype).name}")
        self.data = open(f"{prefix}.bin", "wb")
        self.lengths: list[int] = []

    def add(self, sequences: list[list[int]]) -> None:
        """Append documents, each one sequence of ids."""
        lengths = [len(s) for s in sequences]
        flat = np.fromiter(chain.from_iterable(sequences), self.dtype, count=sum(lengths))
        self.data.write(flat.tobytes())
        self.lengths += lengths

    def finalize(self) -> None:
        """Close the .bin and write the .idx."""
        self.data.close()
        lengths = np.asarray(self.lengths, dtype=np.int64)
        itemsize = np.dtype(self.dtype).itemsize
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1] * itemsize, out=pointers[1:])
        documents = np.arange(len(lengths) + 1, dtype=np.int64)
        with open(f"{self.prefix}.idx", "wb") as f:
            f.write(HEADER)
            f.write(struct.pack("<Q", VERSION))
            f.write(struct.pack("<B", DTYPE_CODES[self.dtype]))
            f.write(struct.pack("<Q", len(lengths)))
            f.write(struct.pack("<Q", len(documents)))
            f.write(lengths.astype(np.int32).tobytes())
            f.write(pointers.tobytes())
            f.write(documents.tobytes())
