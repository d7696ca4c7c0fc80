"""What a backend's ``run(ctx)`` gets: its config, its inputs, where to write, and how to
report progress, metrics and checkpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from llmbuild.backend import Resources
from llmbuild.store.records import Record
from llmbuild.store.store import Store, mark_checkpoint


class ProgressSink(Protocol):
    """Receives progress updates of running nodes (the driver's live view)."""

    def update(self, node: str, fields: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class InputArtifact:
    """An upstream node's committed outputs, as a local directory, with its record; its
    own inputs are found through the store (a stage holding only adapters reads its base
    this way, with no edge of its own in the graph)."""

    path: Path
    record: Record
    store: Store | None = None

    @classmethod
    def of(cls, store: Store, record: Record) -> InputArtifact:
        return cls(store.local_dir(record), record, store)

    @property
    def node(self) -> str:
        return self.record.name

    def upstream(self, slot: str) -> InputArtifact | None:
        """The artifact this one read as ``slot``; None when it read none."""
        ref = self.record.inputs.get(slot)
        if ref is None:
            return None
        if self.store is None:
            raise RuntimeError(f"{self.node}: its inputs cannot be found without its store")
        rec = self.store.record(ref.key)
        if rec is None:
            raise FileNotFoundError(
                f"{ref.node} {ref.key[:12]}, which {self.node} was built from, is not in "
                f"{self.store.url}: build it again"
            )
        return InputArtifact.of(self.store, self.store.resolve(rec))


class Progress:
    """A node's progress feed: ``update(completed=..., total=..., unit=..., loss=...)``.

    Updates are throttled so a tight training loop can call it every step."""

    def __init__(self, node: str, sink: ProgressSink | None, interval: float = 0.25) -> None:
        self.node, self.sink, self.interval = node, sink, interval
        self.fields: dict[str, Any] = {}
        self._last = 0.0

    def update(self, force: bool = False, **fields: Any) -> None:
        self.fields.update(fields)
        now = time.monotonic()
        if not self.fields or self.sink is None:
            return
        if force or now - self._last >= self.interval:
            self._last = now
            self.sink.update(self.node, dict(self.fields))


@dataclass(frozen=True)
class RankInfo:
    """Where a rank function runs in its group (torch.distributed is initialised)."""

    rank: int
    world_size: int
    local_rank: int


RankFn = Callable[[Any, RankInfo], "Path | None"]
C = TypeVar("C", bound=BaseModel)


@dataclass
class RunContext(Generic[C]):
    """Everything one node run may use; ``RunContext[TrainConfig]`` types its config."""

    node: str
    key: str
    config: C
    inputs: dict[str, InputArtifact]
    out_dir: Path
    """Write outputs here; the directory becomes the artifact when the node commits."""
    work_dir: Path
    """Persistent across attempts of this key (checkpoints); removed after commit."""
    resources: Resources
    progress: Progress
    log: logging.Logger
    spec_dir: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    """Summary metrics recorded in the node's record (and compared by reproduce)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each phase of the work, recorded with the node's timings."""
    notes: list[str] = field(default_factory=list)
    """What the user should know about the result (cleaning removed a third of the
    documents, say): shown when the node is built, kept in its record."""
    run_ranks: Callable[[RankFn, Any], Path | None] | None = None
    """Run ``fn(config, rank_info)`` on ``resources.ranks`` torch.distributed ranks
    (TorchTrainer workers under Ray). The directory rank 0 returns comes back as a local
    directory (through Ray Train's checkpoint storage, so it works across machines)."""

    parallel: Callable[[Callable[[Any], Any], list[Any]], list[Any]] | None = None
    """Map a picklable function over items in parallel tasks on this machine (Ray tasks
    under the Ray executor), returning results in order; ``map`` falls back to a loop."""

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        if self.parallel is None or len(items) < 2:
            return [fn(item) for item in items]
        return self.parallel(fn, items)

    def input(self, slot: str) -> InputArtifact:
        try:
            return self.inputs[slot]
        except KeyError:
            raise KeyError(
                f"{self.node} has no input {slot!r} (inputs: {sorted(self.inputs)})"
            ) from None

    def note(self, text: str) -> None:
        """Tell the user something notable about this node's result."""
        self.notes.append(text)
        self.log.info("note: %s", text)

    def mark_checkpoint(self, step: int, **info: Any) -> None:
        """Record that a resumable checkpoint at ``step`` exists in the work dir."""
        mark_checkpoint(self.work_dir, step, **info)
