"""Reading the cleaned shards a ``source:<name>`` node wrote (for the nodes after it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation")


def shard_paths(artifact: Path, split: str) -> list[Path]:
    return sorted(artifact.glob(f"{split}-*.tar"))


def iter_shard(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one webdataset shard, in order."""
    for sample in tar_samples(open(path, "rb"), str(path)):
        for line in sample["jsonl"].decode("utf-8").splitlines():
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
