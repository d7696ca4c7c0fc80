"""The spec model of the ``prune`` stage kind. Torch-free: the planner imports it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from llmbuild.spec.base import Name, PositiveInt, StrList, ref
from llmbuild.spec.model import ArchitecturePatch
from llmbuild.spec.tables import StageTable

NARROWED = ("layers", "hidden", "heads", "kv_heads", "ffn_hidden")
"""The architecture fields pruning may lower; every other one stays the pruned stage's."""


class Prune(StageTable):
    """Structured pruning of a stage to a smaller shape: the layers whose removal costs
    least on calibration text go, and the MLP channels, query groups (a key/value head with
    its query heads) and hidden channels with the smallest activations, as Minitron does.
    Usually followed by `distill` from the stage it pruned."""

    kind: Literal["prune"]
    """Stage kind."""
    from_: Name = ref("stage", alias="from")
    """Stage to prune (full weights: a LoRA stage needs `merge = true`)."""
    architecture: ArchitecturePatch  # type: ignore[valid-type]
    """The pruned shape, as changes to the pruned stage's: fewer `layers`, `ffn_hidden`,
    `hidden`, or `heads` with `kv_heads` in the same ratio (whole query groups go). Each
    head keeps its size."""
    data: StrList | None = ref(
        "tokens", None, slot="data:{name}", source_role="pretrain", omitted="pretrain"
    )
    """Pretrain-role sources whose text calibrates the importance; all of them when
    omitted."""
    calibration_batches: PositiveInt = Field(8, le=1024)
    """Batches of 8 sequences of calibration text."""

    def shape_from(self, parent: Any) -> Any:
        """The pruned architecture: the pruned stage's, with this stage's changes. Each head
        keeps its size; `kv_heads`, when not given, follows `heads` in the same ratio."""
        from llmbuild.spec.model import Architecture

        changes = {
            k: v for k, v in self.architecture.model_dump(mode="json").items() if v is not None
        }
        if "heads" in changes and "kv_heads" not in changes:
            changes["kv_heads"] = changes["heads"] * parent.kv_heads // parent.heads
        if ("heads" in changes or "hidden" in changes) and "head_dim" not in changes:
            changes["head_dim"] = parent.head_size
        return Architecture.model_validate({**parent.model_dump(mode="json"), **changes})
