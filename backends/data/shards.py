"""The cleaned shards of a ``source:<name>`` node: writing them, and reading them for the
nodes after it."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation")


class ShardWriter:
    """Samples (``{"__key__": ..., ext: bytes}``) into tar shards named ``pattern % n``, a
    new shard once one holds ``maxsize`` bytes of payload: the bytes webdataset's
    ``ShardWriter(pattern, maxsize=..., mtime=0)`` writes (a test compares them), without
    its import of torch, which cost every source node one to two seconds. A shard is
    opened with its first sample, so a split without documents has no file."""

    MAXCOUNT = 100_000  # webdataset's default samples per shard

    def __init__(self, pattern: str, maxsize: int) -> None:
        self.pattern, self.maxsize = pattern, maxsize
        self.shard, self.count, self.size = 0, 0, 0
        self.file: Any = None
        self.tar: tarfile.TarFile | None = None

    def write(self, sample: dict[str, Any]) -> None:
        if self.tar is None or self.count >= self.MAXCOUNT or self.size >= self.maxsize:
            self._next()
        key = sample["__key__"]
        for ext in sorted(k for k in sample if not k.startswith("_")):
            data = sample[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            # A float mtime, as webdataset sets it, puts a pax header before each member.
            info.size, info.mtime, info.mode = len(data), 0.0, 0o444
            info.uname = info.gname = "bigdata"
            self.tar.addfile(info, io.BytesIO(data))
            self.size += len(data)
        self.count += 1

    def _next(self) -> None:
        self.close()
        self.file = open(self.pattern % self.shard, "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w|")
        self.shard, self.count, self.size = self.shard + 1, 0, 0

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.file.close()
            self.tar = self.file = None


def shard_paths(artifact: Path, split: str) -> list[Path]:
    return sorted(artifact.glob(f"{split}-*.tar"))


def iter_shard(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one cleaned shard, in order. The shards are ours (one ``.jsonl``
    member per block of documents), so the standard library reads them: webdataset,
    needed for users' shards, imports torch, which would cost every data worker a second."""
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            if member.name.endswith(".jsonl"):
                for line in tar.extractfile(member).read().decode("utf-8").splitlines():
                    yield json.loads(line)


class _Tail:
    """A stream that remembers the last bytes read from it."""

    def __init__(self, stream: Any, keep: int) -> None:
        self.stream, self.keep, self.tail, self.head = stream, keep, b"", b""

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        if len(self.head) < 6:
            self.head = (self.head + data)[:6]
        self.tail = (self.tail + data)[-self.keep :]
        return data

    @property
    def compressed(self) -> bool:
        """Whether tarfile unpacks it itself (a .tgz, .tar.bz2 or .tar.xz not named so
        that ``open_binary`` would): its last bytes are then not the archive's."""
        return self.head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))


END_OF_ARCHIVE = 1024
"""A tar archive ends with two zero blocks of 512 bytes (then zeros to its record size)."""


def tar_samples(stream: Any, url: str) -> Iterator[dict[str, Any]]:
    """webdataset samples (members grouped by key) of one tar stream, which it closes. A
    stream that ends without the end-of-archive blocks was cut short between members
    (tarfile takes that for the end): a tarfile.ReadError."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    def fail(exc: Exception) -> bool:
        raise exc

    with stream:
        tail = _Tail(stream, END_OF_ARCHIVE)
        yield from group_by_keys(
            tar_file_expander([{"stream": tail, "url": url}], handler=fail), handler=fail
        )
        while tail.read(1 << 16):  # to its end: the record's padding
            pass
        whole = len(tail.tail) == END_OF_ARCHIVE and tail.tail.count(0) == END_OF_ARCHIVE
        if not whole and not tail.compressed:
            raise tarfile.ReadError("it ends without the end-of-archive blocks: cut short")


def iter_split(artifact: Path, split: str) -> Iterator[dict[str, Any]]:
    for path in shard_paths(artifact, split):
        yield from iter_shard(path)
