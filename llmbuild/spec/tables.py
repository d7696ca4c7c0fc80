"""The fields every ``[[stage]]``, ``[[eval]]`` and ``[[export]]`` table has, whatever its
kind. A kind's own model (registered by its backend, see ``llmbuild.kinds``) extends one
of these bases; the core knows nothing else of it."""

from __future__ import annotations

from typing import Literal

from llmbuild.spec.base import Name, SpecModel, StrList, marked, ref

Table = Literal["stage", "eval", "export"]
TABLES: tuple[Table, ...] = ("stage", "eval", "export")
TAG: dict[Table, str] = {"stage": "kind", "eval": "kind", "export": "format"}
"""The field whose value picks a table's kind."""


class StageTable(SpecModel):
    """Fields every stage has: its name, and the kind that decides the rest."""

    name: Name = marked("label")
    """Name of the stage, used by `from`, evals and exports."""

    @property
    def adapters_only(self) -> bool:
        """Whether the stage's artifact holds only adapters, to be applied to its base."""
        return False

    @property
    def has_adapters(self) -> bool:
        """Whether the stage trains adapters (exportable as a PEFT adapter)."""
        return False


class EvalTable(SpecModel):
    """Fields every eval suite has; one eval node runs per suite and stage."""

    name: Name = marked("label")
    """Name of the suite."""
    stages: StrList = ref("stage", slot="model", each=True, min_length=1)
    """Stages to evaluate."""


class ExportTable(SpecModel):
    """Fields every export target has."""

    stage: Name = ref("stage", slot="model")
    """The stage to export."""
    name: Name | None = marked("label", None)
    """Node name suffix, needed only when two exports share format and stage."""


BASES: dict[Table, type[SpecModel]] = {
    "stage": StageTable,
    "eval": EvalTable,
    "export": ExportTable,
}


def node_name(table: Table, item: dict | SpecModel, target: str | None = None) -> str | None:
    """The graph node a table item makes (an eval makes one per stage, ``target``):
    ``stage:<name>``, ``eval:<suite>@<stage>``, ``export:<format>@<stage>`` or, for an
    export with a name, ``export:<name>``; an eval reading all of its stages at once (its
    ``stages`` not marked ``each``), ``eval:<suite>``. None when the item lacks what names
    it."""
    get = item.get if isinstance(item, dict) else lambda k: getattr(item, k, None)
    name = get("name")
    if table == "stage":
        return f"stage:{name}" if isinstance(name, str) else None
    if table == "eval":  # a suite over many stages at once makes one node
        if not isinstance(name, str):
            return None
        return f"eval:{name}@{target}" if target else f"eval:{name}"
    if isinstance(name, str):
        return f"export:{name}"
    fmt, stage = get("format"), get("stage")
    return f"export:{fmt}@{stage}" if isinstance(fmt, str) and isinstance(stage, str) else None
