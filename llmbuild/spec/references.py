"""The references of a table item: every name a field marked with ``ref`` writes, found
by walking the item's model (nested tables and arrays of tables included).

One walker serves the checks (on the raw composed data, so a mistake elsewhere in the
item hides no reference) and the planner (on validated items, dumped to the same form),
so what is checked is exactly what becomes an edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from llmbuild.errors import Path
from llmbuild.spec.base import KeyMark, key_mark

TARGET_NODE = {"stage": "stage:{}", "text": "source:{}", "tokens": "tokenize:{}"}
"""The node a reference names, by its target."""


@dataclass(frozen=True)
class Reference:
    """One name written in a reference field."""

    path: Path
    """Where the name is written, from the item (e.g. ``("rewards", 0, "stage")``)."""
    field: str
    """The item's top-level field (alias) that holds it."""
    mark: KeyMark
    name: str
    slot: str
    """The input slot the name becomes on the node that reads it."""

    @property
    def node(self) -> str:
        return TARGET_NODE[self.mark.target or "stage"].format(self.name)


@dataclass(frozen=True)
class Omitted:
    """A reference field left out that stands for every source of a role."""

    field: str
    mark: KeyMark

    def slot(self, name: str) -> str:
        return _slot(self.mark, self.field, name, None, listed=True)


def _slot(mark: KeyMark, alias: str, name: str, index: int | None, listed: bool) -> str:
    pattern = mark.slot or (f"{alias}:{{name}}" if listed else alias)
    return pattern.format(name=name, index=index if index is not None else "")


def _members(tp: Any) -> list[type[BaseModel]]:
    """The models a field's type may hold (through Optional, unions and tuples)."""
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    if origin is not None and origin not in (dict,):
        return [m for arg in get_args(tp) for m in _members(arg)]
    return []


def _model_for(tp: Any, raw: dict[str, Any]) -> type[BaseModel] | None:
    """The member model a raw table is validated as (by its ``kind`` tag in a union)."""
    members = _members(tp)
    if len(members) == 1:
        return members[0]
    for m in members:
        for tag_field in ("kind", "format"):
            f = m.model_fields.get(tag_field)
            if f is not None and raw.get(tag_field) in get_args(f.annotation):
                return m
    return None


def walk(
    model: type[BaseModel], raw: Any, top: str | None = None, index: int | None = None
) -> tuple[list[Reference], list[Omitted]]:
    """The references written in ``raw`` (a table validated as ``model``), and the
    omitted ones that stand for a role's sources. Values of the wrong type are skipped
    (field validation reports them)."""
    refs: list[Reference] = []
    omitted: list[Omitted] = []
    if not isinstance(raw, dict):
        return refs, omitted
    for name, f in model.model_fields.items():
        alias = f.alias or name
        field = top or alias
        value = raw.get(alias, raw.get(name))
        mark = key_mark(model, name)
        here: Path = (alias,)
        if mark is not None and mark.role == "reference":
            if value is None:
                if mark.omitted and top is None:
                    omitted.append(Omitted(alias, mark))
                continue
            listed = isinstance(value, list)
            names = value if listed else [value]
            for i, v in enumerate(names):
                if isinstance(v, str):
                    path = here + ((i,) if listed else ())
                    slot = _slot(mark, alias, v, index, listed)
                    refs.append(Reference(path, field, mark, v, slot))
            continue
        if not _members(f.annotation):
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            sub = _model_for(f.annotation, item)
            if sub is None:
                continue
            sub_refs, _ = walk(sub, item, field, i if isinstance(value, list) else index)
            prefix = here + ((i,) if isinstance(value, list) else ())
            refs += [Reference(prefix + r.path, r.field, r.mark, r.name, r.slot) for r in sub_refs]
    return refs, omitted
