"""Kinds complete the spec from the files their items name, before validation: an
imported checkpoint's ``config.json`` fills ``[architecture]``, its tokenizer the
``[tokenizer]`` table. The spec's own values win, except where they contradict what the
files fix, which is a located error."""

from __future__ import annotations

from typing import Any

from llmbuild.errors import Path, Problem
from llmbuild.spec.compose import Layer, Origin, _walk
from llmbuild.spec.tables import TABLES


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, bool) or isinstance(b, bool):  # True is no 1 here: a flag is a flag
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def complete(layer: Layer, registry: Any) -> tuple[list[Problem], set[str]]:
    """Apply every item's completion to ``layer`` (in place); the problems found, and the
    tables a completion would have filled had its files been readable."""
    data, problems, unfilled = layer.data, [], set()
    filled: dict[Path, tuple[str, Any]] = {}  # by an earlier item: its origin and value
    for table in TABLES:
        items = data.get(table)
        dropped: list[int] = []
        for i, item in enumerate(list(items) if isinstance(items, list) else []):
            kind = registry.kind_of(table, item)
            try:
                done = kind.complete(item, (table, i), data) if kind is not None else None
            except Exception as e:  # a kind's bug must not become a user's traceback
                problems.append(
                    Problem(f"kind {kind.tag!r} cannot read this item: {e}", (table, i))
                )
                continue
            if done is None:
                continue
            problems += done.problems
            if done.replace and not done.problems:  # kept to locate its problems
                dropped.append(i)
            _append(layer, done.add, Origin(done.origin))
            if done.problems or not (done.fields or done.tables or done.item or done.add):
                unfilled.update(done.fills)  # said as the item's problem, not as tables missing
            origin = Origin(done.origin)
            for key, value in done.item.items():
                item[key] = value
            for name, values in done.tables.items():
                section = data.get(name)
                if name not in data:
                    data[name] = section = {}
                elif not isinstance(section, dict) or set(section) & set(values):
                    continue  # a table of the spec's own (or not a table: validation says)
                for key, value in values.items():  # a table that only adjusts the filled one
                    section.setdefault(key, value)
                    for sub in ((name, key), *_walk(value, (name, key))):
                        layer.origins.setdefault(sub, origin)
            for name, values in done.fields.items():
                section = data.setdefault(name, {})
                if not isinstance(section, dict):
                    continue  # not a table: field validation reports it
                free = done.free.get(name, ())
                disagree: list[str] = []  # keys an earlier item filled otherwise
                for key, value in values.items():
                    path: Path = (name, key)
                    if key not in section:
                        section[key] = value
                        filled[path] = (done.origin, value)
                        for sub in (path, *_walk(value, path)):
                            layer.origins[sub] = origin
                    elif path in filled and key not in free and not _same(filled[path][1], value):
                        disagree.append(key)
                    elif key not in free and not _same(section[key], value):
                        problems.append(
                            Problem(
                                f"{section[key]!r} contradicts {done.origin}, which has "
                                f"{value!r}: leave it out, the checkpoint sets it",
                                path,
                            )
                        )
                if disagree:  # two items filling one table, each with its own values
                    first = filled[(name, disagree[0])][0]
                    said = [
                        f"{k} ({filled[(name, k)][1]!r} against {values[k]!r})" for k in disagree
                    ]
                    problems.append(
                        Problem(
                            f"{first} and {done.origin} disagree on [{name}]: "
                            f"{', '.join(said)}; a spec has one {name} table, which "
                            "every item that fills it must agree with",
                            (table, i),
                        )
                    )
        if dropped and isinstance(items, list):
            moved = _drop(layer, table, dropped)
            problems = [_moved(p, table, moved) for p in problems]
    return problems, unfilled


def _moved(problem: Problem, table: str, moved: dict[int, int]) -> Problem:
    """``problem`` at its item's place after macro items before it left the array."""
    from dataclasses import replace

    def place(path: Path) -> Path:
        if len(path) > 1 and path[0] == table and isinstance(path[1], int) and path[1] in moved:
            return (table, moved[path[1]], *path[2:])
        return path

    return replace(problem, path=place(problem.path), related=tuple(map(place, problem.related)))


def _append(layer: Layer, add: dict[str, list[dict[str, Any]]], origin: Origin) -> None:
    """Append generated items to arrays of tables (after the spec's own)."""
    for name, new in add.items():
        items = layer.data.setdefault(name, [])
        if not isinstance(items, list):
            continue  # not an array: field validation reports it
        for item in new:
            path: Path = (name, len(items))
            items.append(item)
            layer.origins[path] = origin
            for sub in _walk(item, path):
                layer.origins[sub] = origin


def _drop(layer: Layer, table: str, dropped: list[int]) -> dict[int, int]:
    """Remove macro items, renumbering the origins of the items after them; each kept
    item's new index by its old one."""
    items = layer.data[table]
    keep = [i for i in range(len(items)) if i not in dropped]
    layer.data[table] = [items[i] for i in keep]
    moved = {old: new for new, old in enumerate(keep)}
    origins = {}
    for path, origin in layer.origins.items():
        if len(path) > 1 and path[0] == table and isinstance(path[1], int):
            if path[1] in moved:
                origins[(table, moved[path[1]], *path[2:])] = origin
        else:
            origins[path] = origin
    layer.origins.clear()
    layer.origins.update(origins)
    return moved
