"""Reading the cleaned shards a ``source:<name>`` node wrote (for the nodes after it)."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation")


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


def tar_samples(stream: Any, url: str) -> Iterator[dict[str, Any]]:
    """webdataset samples (members grouped by key) of one tar stream, which it closes."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    def fail(exc: Exception) -> bool:
        raise exc

    with stream:
        yield from group_by_keys(
            tar_file_expander([{"stream": stream, "url": url}], handler=fail), handler=fail
        )


def iter_split(artifact: Path, split: str) -> Iterator[dict[str, Any]]:
    for path in shard_paths(artifact, split):
        yield from iter_shard(path)
