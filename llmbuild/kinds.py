"""Node kinds: each kind of ``[[stage]]``, ``[[eval]]`` and ``[[export]]`` table, declared
once, in the folder of the backend that runs it.

A kind is its spec model (a subclass of a table base in ``llmbuild.spec.tables``, whose
``kind`` or ``format`` literal is the kind's tag), the backend that runs its nodes, the
node config it builds, its implicit inputs, and its own checks. Every field the model
marks as a reference (``llmbuild.spec.base.ref``) becomes an input edge by itself; every
content field becomes an external input. The core builds the spec's unions, the JSON
Schema, the spec reference and the graph from the registered kinds, which come through
the ``llmbuild.kinds`` entry point group, built-in and third-party alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, get_args

from pydantic import BaseModel, BeforeValidator, SerializeAsAny

from llmbuild.errors import Path, Problem
from llmbuild.spec.base import SpecModel
from llmbuild.spec.tables import BASES, TAG, Table

if TYPE_CHECKING:
    from llmbuild.spec.data import Source
    from llmbuild.spec.model import Architecture, Parallelism
    from llmbuild.spec.root import Spec


@dataclass(frozen=True)
class SpecView:
    """What a kind's checks may look at: the validated items of the spec (an item whose
    own fields failed validation is absent, its problems already reported) and the raw
    composed data."""

    raw: dict[str, Any]
    stages: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    architecture: Architecture | None = None
    parallelism: Parallelism | None = None

    def raw_items(self, path: Path) -> list[Any]:
        """The raw items of the array of tables at ``path`` (e.g. ``("data", "sources")``)."""
        node: Any = self.raw
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        return node if isinstance(node, list) else []


@dataclass(frozen=True)
class NodeRefs:
    """The names an item's references resolved to, for one of its nodes."""

    names_by_field: dict[str, tuple[str, ...]]
    """Field (alias) -> the names it refers to, omitted references filled in."""
    target: str | None = None
    """The stage an eval node evaluates (its suite makes one node per stage)."""

    def names(self, field: str) -> tuple[str, ...]:
        return self.names_by_field.get(field, ())


@dataclass
class Completion:
    """What a kind adds to a spec from the files its item names (a checkpoint's
    ``config.json``, say), before the spec is validated."""

    origin: str
    """Where the values come from, as ``resolve`` and error messages show it."""
    item: dict[str, Any] = field(default_factory=dict)
    """Values replacing the item's own (a Hub id resolved to a local snapshot, say)."""
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per top-level table, values under the spec's own; a spec that sets one of them to
    something else is an error, unless the field is listed in ``free``."""
    free: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per table, the fields a spec may set to other values (a training context, say)."""
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Whole tables, used only when the spec has none of its own (a tokenizer, say)."""
    problems: list[Problem] = field(default_factory=list)
    add: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Items to append to arrays of tables (a sweep's stages and its fit, say)."""
    replace: bool = False
    """The item stands for what ``add`` appends and leaves the spec (a macro)."""
    fills: tuple[str, ...] = ()
    """Tables this kind fills when its files can be read: a spec without them is not
    reported as lacking them while the files' problems stand."""


class Kind:
    """One kind of table item. Subclasses override what differs from the defaults."""

    model: type[SpecModel]
    backend: str
    table: Table
    tag: str

    def __init__(self, model: type[SpecModel], backend: str) -> None:
        self.model, self.backend = model, backend
        tables = [t for t, base in BASES.items() if issubclass(model, base)]
        if len(tables) != 1:
            raise TypeError(f"{model.__name__} extends none of the table bases {list(BASES)}")
        self.table = tables[0]
        tag_field = model.model_fields.get(TAG[self.table])
        tags = get_args(tag_field.annotation) if tag_field is not None else ()
        if len(tags) != 1 or not isinstance(tags[0], str):
            raise TypeError(
                f"{model.__name__}.{TAG[self.table]} must be a Literal of one string (its tag)"
            )
        self.tag = tags[0]

    def config(self, item: Any, spec: Spec, refs: NodeRefs) -> BaseModel:
        """The config of the node ``item`` makes."""
        raise NotImplementedError(f"kind {self} builds no node config")

    def inputs(self, item: Any, spec: Spec) -> dict[str, str]:
        """Inputs the node reads without a spec field naming them: slot -> node."""
        return {"tokenizer": "tokenizer"}

    def omitted(self, item: Any, spec: Spec, field: str, names: list[str]) -> list[str]:
        """The nodes the reference ``field``, left out, stands for: ``names`` (the sources
        of the role its mark says), or fewer where this item reads none of them."""
        return names

    def labels(self, item: Any) -> dict[str, str]:
        """Top-level config keys -> the spec keys they come from, for explaining rebuilds."""
        return {}

    def check(self, item: Any, where: Path, view: SpecView) -> list[Problem]:
        """Problems of this item that span tables (its own fields are validated already)."""
        return []

    def rebase(self, raw: dict[str, Any], folder: str) -> None:
        """Resolve in place what the raw item, as the spec file in ``folder`` writes it,
        names relative to that file beyond its content paths (which the core makes
        absolute): a reward function's module, say. It runs again, with the working
        directory, after each ``--set``: keep what an earlier run resolved that still
        holds. Cheap: files may be looked for, never read."""

    def complete(self, raw: dict[str, Any], where: Path, spec: dict[str, Any]) -> Completion | None:
        """What the item adds to the spec, from the raw composed item (paths made absolute)
        and the raw spec around it. Cheap: ``validate`` and ``plan`` run it."""
        return None

    def __repr__(self) -> str:
        return f"<kind {self.table}.{self.tag} on {self.backend}>"


def _as_item(table: Table) -> Any:
    def validate(value: Any) -> Any:
        if isinstance(value, dict):
            from llmbuild.registry import default_registry

            tag = value.get(TAG[table])
            return default_registry().kind(table, tag).model.model_validate(value)
        return value

    return validate


def item_type(table: Table) -> Any:
    """The type of a node config field holding one table item of any registered kind:
    it keeps the item's own model (and serialises all of its fields), and validates a
    dict through the model its tag registers."""
    return Annotated[SerializeAsAny[BASES[table]], BeforeValidator(_as_item(table))]


def import_object(path: str) -> Any:
    """``package.module:name`` -> the object."""
    import importlib

    module, _, name = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj
