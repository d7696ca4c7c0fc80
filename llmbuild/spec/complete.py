"""Kinds complete the spec from the files their items name, before validation: an
imported checkpoint's ``config.json`` fills ``[architecture]``, its tokenizer the
``[tokenizer]`` table. The spec's own values win, except where they contradict what the
files fix, which is a located error."""

from __future__ import annotations

from typing import Any

from llmbuild.errors import Path, Problem
from llmbuild.spec.compose import Layer, Origin
from llmbuild.spec.tables import TABLES


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return not isinstance(a, bool) and not isinstance(b, bool) and float(a) == float(b)
    return a == b


def complete(layer: Layer, registry: Any) -> tuple[list[Problem], set[str]]:
    """Apply every item's completion to ``layer`` (in place); the problems found, and the
    tables a completion would have filled had its files been readable."""
    data, problems, unfilled = layer.data, [], set()
    for table in TABLES:
        items = data.get(table)
        for i, item in enumerate(items if isinstance(items, list) else []):
            kind = registry.kind_of(table, item)
            done = kind.complete(item, (table, i)) if kind is not None else None
            if done is None:
                continue
            problems += done.problems
            if done.problems:
                unfilled.update(done.fills)
            origin = Origin(done.origin)
            for key, value in done.item.items():
                item[key] = value
            for name, values in done.tables.items():
                if name not in data:
                    data[name] = dict(values)
                    for key in values:
                        layer.origins[(name, key)] = origin
            for name, values in done.fields.items():
                section = data.setdefault(name, {})
                if not isinstance(section, dict):
                    continue  # not a table: field validation reports it
                free = done.free.get(name, ())
                for key, value in values.items():
                    path: Path = (name, key)
                    if key not in section:
                        section[key] = value
                        layer.origins[path] = origin
                    elif key not in free and not _same(section[key], value):
                        problems.append(
                            Problem(
                                f"{section[key]!r} contradicts {done.origin}, which has "
                                f"{value!r}: leave it out, the checkpoint sets it",
                                path,
                            )
                        )
    return problems, unfilled
