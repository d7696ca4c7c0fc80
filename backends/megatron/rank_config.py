"""What every rank of a training stage is given: one frozen, picklable object, built by
``run.py`` from the node's config and inputs, read by ``train.py`` and the objective
builders. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WeightsRef:
    """Where a stage's weights lie: its directory and, when it holds only adapters, its
    base's (``weights.load_stage`` merges them)."""

    dir: str
    base: str | None = None


CHECKPOINT_LAYOUT = ("tensor", "pipeline", "data", "distributed_optimizer")
"""The ``[parallelism]`` fields a checkpoint's ranks and shards follow: another value of
any of them cannot resume it."""


@dataclass(frozen=True)
class RankConfig:
    """One training stage, as its ranks see it."""

    architecture: dict[str, Any]
    """The architecture table, as JSON."""
    stage: dict[str, Any]
    """The stage table, as JSON (by alias: ``from``)."""
    objective: str
    """``module:function`` that builds what the stage optimises (from its kind)."""
    seed: int
    vocab_size: int
    eod: int
    """End of document (the tokenizer's end-of-sequence id)."""
    pad: int
    bos: int | None
    """Beginning of sequence (an encoder's ``[CLS]``); None when the tokenizer has none."""
    mask: int | None
    """The mask token of masked-LM pretraining; None when the tokenizer has none."""
    stops: tuple[int, ...]
    """Tokens that end a sampled completion besides ``eod`` (GRPO)."""
    tokenizer_json: str
    sources: dict[str, str]
    """Source name -> its tokenized datasets' directory."""
    mixture: dict[str, float]
    work_dir: str
    tensor: int = 1
    pipeline: int = 1
    micro_batch: int = 1
    recompute: str = "none"
    sequence_parallel: bool = False
    distributed_optimizer: bool = False
    eval_every: int | None = None
    checkpoint_every: int = 100
    log_every: int = 10
    init: WeightsRef | None = None
    """The stage to start from; from scratch when None."""
    reference: WeightsRef | None = None
    """The frozen reference (DPO, GRPO): ``init`` when None."""
    teacher: WeightsRef | None = None
    """Distillation: the frozen teacher's weights."""
    teacher_architecture: dict[str, Any] | None = None
    """Distillation: the teacher's architecture table, as JSON (its artifact's)."""
    reward_models: dict[int, WeightsRef] = field(default_factory=dict)
    """GRPO: reward-model stages by their index in ``rewards``."""
    labels: tuple[str, ...] = ()
    """Classification: the label names, in the order of the head's outputs."""
    class_weights: tuple[float, ...] = ()
    """Classification: the loss weight of each label id; equal when empty."""
    threads: int = 1
    """torch intra-op threads of each rank: the CPUs it holds."""
    layout: dict[str, Any] = field(default_factory=dict)
    """The ``[parallelism]`` fields a resumable checkpoint is bound to, as the spec sets
    them; written beside each checkpoint (``CHECKPOINT_LAYOUT``)."""
    progress: Any = None
    """Rank 0 reports steps and losses here (the node's progress feed)."""
