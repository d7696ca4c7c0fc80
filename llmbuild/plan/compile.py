"""Compile a resolved spec into the build graph. Pure: nothing is read or run.

    source:<name> -> tokenize:<name> -> stage:<name> -> eval:<suite>@<stage>
          \\-> tokenizer ---^                      \\-> export:<format>@<stage>

The front (sources, tokenizer, tokenize) comes from the fixed tables; every
``[[stage]]``, ``[[eval]]`` and ``[[export]]`` item becomes a node of its registered
kind. A node's inputs are its kind's implicit ones plus one edge per name its reference
fields write, found by the same walk the checks use; its external inputs are its content
fields. Nodes are then put in topological order over those edges, in one generic pass:
a cycle is a located spec error, never a hang.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from llmbuild.errors import Path, Problem, SpecError
from llmbuild.kinds import NodeRefs
from llmbuild.plan.front import front_nodes, role_sources
from llmbuild.plan.graph import External, Graph, Node
from llmbuild.registry import Registry, default_registry
from llmbuild.spec.base import key_mark
from llmbuild.spec.references import TARGET_NODE, walk
from llmbuild.spec.root import Spec
from llmbuild.spec.tables import TABLES, TAG, node_name


def content_label(spec: Spec, path: Path) -> str:
    """A content field's spec key with items by name (``stage.base.checkpoint``), as plan's
    reasons name fields; a tokenizer that an imported checkpoint fills in is that
    checkpoint's."""
    if path == ("tokenizer", "path"):
        here = getattr(spec.tokenizer, "path", None)
        for stage in spec.stage:
            if here is not None and getattr(stage, "checkpoint", None) == here:
                return f"stage.{stage.name}.checkpoint (its tokenizer files)"
    out, at = "", spec
    for part in path:
        if isinstance(part, int):
            at = at[part] if isinstance(at, (list, tuple)) and part < len(at) else None
            name = getattr(at, "name", None)
            out += f".{name}" if isinstance(name, str) else f"[{part}]"
        else:
            at = getattr(at, part, None)
            out += f".{part}" if out else part
    return out


def content_inputs(
    item: Any, path: Path, spec: Spec | None = None, index: int | None = None
) -> tuple[External, ...]:
    """The external inputs of an item: one per content field that is set, its own or one
    of the tables it holds (a reward function's module file); ``index``: the item's
    index in its list, which tells its slots apart (``function:{index}``)."""
    out: list[External] = []
    for name, f in type(item).model_fields.items():
        mark = key_mark(type(item), name)
        value = getattr(item, name)
        alias = f.alias or name
        if mark is None or mark.role != "content":
            out += _held_inputs(value, (*path, alias), spec)
            continue
        if value in (None, ()):
            continue
        patterns = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        out.append(
            External(
                (mark.slot or alias).format(index="" if index is None else index),
                patterns,
                (*path, alias),
                mark.unordered,
                mark.suffixes,
                mark.files,
                content_label(spec, (*path, alias)) if spec is not None else "",
            )
        )
    return tuple(out)


def _held_inputs(value: Any, path: Path, spec: Spec | None) -> list[External]:
    """The content inputs of the tables a field holds (one, or a list of them)."""
    if isinstance(value, BaseModel):
        return list(content_inputs(value, path, spec))
    if isinstance(value, (list, tuple)):
        return [
            ext
            for i, v in enumerate(value)
            if isinstance(v, BaseModel)
            for ext in content_inputs(v, (*path, i), spec, i)
        ]
    return []


class _Builder:
    def __init__(self, spec: Spec, registry: Registry) -> None:
        self.spec, self.registry = spec, registry
        self.nodes: list[Node] = []
        self.paths: dict[str, dict[str, Path]] = {}
        """node -> slot -> the spec key that wrote the edge (for cycle messages)."""

    def add(
        self,
        name: str,
        kind: str,
        backend_name: str,
        config: Any,
        item: Any = None,
        path: Path = (),
        inputs: dict[str, str] | None = None,
        cutoff: bool = False,
        labels: dict[str, str] | None = None,
        edge_paths: dict[str, Path] | None = None,
    ) -> None:
        backend = self.registry.get(backend_name)
        self.nodes.append(
            Node(
                name=name,
                kind=kind,
                backend=backend.name,
                backend_version=backend.version,
                config=config,
                inputs=inputs or {},
                external=content_inputs(item, path, self.spec) if item is not None else (),
                resources=backend.resources(config),
                cutoff=cutoff,
                labels=labels or {},
            )
        )
        self.paths[name] = edge_paths or {}

    def table_items(self) -> None:
        for table in TABLES:
            for i, item in enumerate(getattr(self.spec, table)):
                kind = self.registry.kind(table, getattr(item, TAG[table]))
                refs, omitted = walk(kind.model, item.model_dump(mode="json", by_alias=True))
                names: dict[str, list[str]] = {}
                for r in refs:
                    names.setdefault(r.field, []).append(r.name)
                each = [r for r in refs if r.mark.each]
                for target in [r.name for r in each] or [None]:
                    for o in omitted:
                        every = self._omitted(o.mark, target)
                        names[o.field] = kind.omitted(item, self.spec, o.field, every)
                    inputs = dict(kind.inputs(item, self.spec))
                    edge_paths: dict[str, Path] = {}
                    for r in refs:
                        if r.mark.each and r.name != target:
                            continue
                        inputs[r.slot] = r.node
                        edge_paths[r.slot] = (table, i, *r.path)
                    for o in omitted:
                        for n in names[o.field]:
                            inputs[o.slot(n)] = TARGET_NODE[o.mark.target or ""].format(n)
                    node_refs = NodeRefs({k: tuple(v) for k, v in names.items()}, target)
                    self.add(
                        node_name(table, item, target),
                        table,
                        kind.backend,
                        kind.config(item, self.spec, node_refs),
                        item=item,
                        path=(table, i),
                        inputs=inputs,
                        labels=kind.labels(item),
                        edge_paths=edge_paths,
                    )

    def _omitted(self, mark: Any, target: str | None) -> list[str]:
        """The sources an omitted reference stands for in the node of ``target``."""
        every = role_sources(self.spec, mark.omitted)
        stage = next((s for s in self.spec.stage if s.name == target), None)
        if not mark.own or stage is None:
            return every
        data = getattr(stage, "data", None)
        own = [data] if isinstance(data, str) else list(data or ())
        return [n for n in every if n in own] or every

    def ordered(self) -> list[Node]:
        """The nodes in topological order (declaration order among equals)."""
        by_name = {n.name: n for n in self.nodes}
        done: dict[str, None] = {}
        visiting: list[str] = []

        def visit(name: str) -> None:
            if name in done:
                return
            if name in visiting:
                loop = visiting[visiting.index(name) :] + [name]
                slot = next(s for s, u in by_name[loop[-2]].inputs.items() if u == name)
                where = self.paths[loop[-2]].get(slot, ())
                raise SpecError([Problem(f"the graph has a cycle: {' -> '.join(loop)}", where)])
            visiting.append(name)
            for up in by_name[name].upstream:
                if up in by_name:
                    visit(up)
            visiting.pop()
            done[name] = None

        for node in self.nodes:
            visit(node.name)
        return [by_name[n] for n in done]


def compile_plan(spec: Spec, registry: Registry | None = None) -> Graph:
    """The build graph of a validated spec, in topological order."""
    builder = _Builder(spec, registry or default_registry())
    front_nodes(spec, builder.add)
    builder.table_items()
    return Graph(builder.ordered())
