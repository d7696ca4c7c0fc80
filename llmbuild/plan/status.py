"""What a build would do, node by node, and why: the plan. Nothing here runs anything.

A node is ``cached`` when the store holds a verified artifact under its key (whatever
name built it: a renamed node is cached), ``running elsewhere`` when another build holds
its lease, ``resume`` when a killed build left a checkpoint under its key, and ``build``
otherwise, with a reason: the changed fields of the root cause (diffing the key preimage
recorded by the last build of that node name), the upstream that changed, or the
corruption found in what the store held. ``build`` decides with the same ``lookup``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from llmbuild.backend import Resources
from llmbuild.errors import format_path
from llmbuild.plan.canonical import canonical_hash
from llmbuild.plan.graph import Graph, Node
from llmbuild.plan.keys import NodeKey, cutoff_key

if TYPE_CHECKING:
    from llmbuild.store.records import Record

Status = Literal["cached", "build", "resume", "running elsewhere"]


@dataclass(frozen=True)
class Lookup:
    """What the store holds under a key."""

    state: Literal["cached", "missing", "corrupt", "stale"]
    record: Record | None = None
    """The key's own record (for an early cut-off alias, the alias)."""
    target: Record | None = None
    """The record holding the outputs (the alias's target, else the record itself)."""
    problem: str = ""

    @property
    def cached(self) -> bool:
        return self.state == "cached"


MISSING = Lookup("missing")


class StoreView(Protocol):
    """What planning asks of a store."""

    def lookup(self, key: str, verify: bool = True) -> Lookup: ...
    def last_preimage(self, name: str) -> dict[str, Any] | None: ...
    def running_elsewhere(self, key: str) -> str | None: ...
    def resumable(self, key: str, parallelism: Any = None) -> str | None: ...
    def other_layout(self, key: str, parallelism: Any) -> str | None: ...


class EmptyStore:
    """A store with nothing in it: every node builds."""

    def lookup(self, key: str, verify: bool = True) -> Lookup:
        return MISSING

    def last_preimage(self, name: str) -> dict[str, Any] | None:
        return None

    def running_elsewhere(self, key: str) -> str | None:
        return None

    def resumable(self, key: str, parallelism: Any = None) -> str | None:
        return None

    def other_layout(self, key: str, parallelism: Any) -> str | None:
        return None


def _show(value: Any) -> str:
    if isinstance(value, float):
        return re.sub(
            r"e([+-])0*(\d)", lambda m: f"e{m.group(1).replace('+', '')}{m.group(2)}", repr(value)
        )
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@dataclass(frozen=True)
class Change:
    """One field whose value differs from the last build of a node."""

    field: str
    old: Any
    new: Any
    note: str = ""

    def __str__(self) -> str:
        if self.note:
            return f"{self.field} {self.note}"
        return f"{self.field} {_show(self.old)} -> {_show(self.new)}"


ABSENT = object()
"""A field one preimage leaves out (an added field at its default, say)."""


def _diff(old: Any, new: Any, path: str, out: list[Change]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            a, b, at = old.get(k, ABSENT), new.get(k, ABSENT), f"{path}.{k}" if path else k
            if a is ABSENT or b is ABSENT:
                out.append(Change(at, a, b))
            else:
                _diff(a, b, at, out)
    elif (
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and any(isinstance(v, (dict, list)) for v in old + new)
    ):
        for i, (a, b) in enumerate(zip(old, new)):
            _diff(a, b, f"{path}[{i}]", out)
    elif canonical_hash(old) != canonical_hash(new):
        out.append(Change(path, old, new))


def field_changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Every field in which two preimages of a node differ, config and inputs alike."""
    out: list[Change] = []
    _diff(old, new, "", out)
    return out


def _default(config: Any, path: str) -> Any:
    """The default of the config field at ``path`` (``suite.batch_size``), or None."""
    *parents, name = re.split(r"\.|\[", path)
    model = config
    try:
        for part in parents:
            model = model[int(part[:-1])] if part.endswith("]") else getattr(model, part, None)
    except (IndexError, KeyError, TypeError, ValueError):
        return None
    found = getattr(type(model), "model_fields", {}).get(name)
    return None if found is None or found.is_required() else found.default


def explain(
    node: Node, old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[list[Change], list[str]]:
    """Root-cause changes between two preimages of one node, and the changed input slots
    that are other nodes (the upstream that changed)."""
    changes: list[Change] = []
    if old.get("backend") != new.get("backend") or old.get("backend_version") != new.get(
        "backend_version"
    ):
        changes.append(
            Change(
                f"backend {new.get('backend')}",
                f"{old.get('backend')} v{old.get('backend_version')}",
                f"{new.get('backend')} v{new.get('backend_version')}",
            )
        )
    config_changes: list[Change] = []
    _diff(old.get("config", {}), new.get("config", {}), "", config_changes)
    for c in config_changes:
        if c.old is ABSENT or c.new is ABSENT:  # keys leave such a field out at its default
            default = _default(node.config, c.field)
            c = replace(c, old=default if c.old is ABSENT else c.old,
                        new=default if c.new is ABSENT else c.new)  # fmt: skip
        top, _, rest = c.field.partition(".")
        top_name, bracket, idx = top.partition("[")
        label = node.spec_key(top_name) + (f"[{idx}" if bracket else "")
        if "{}" in label:  # a table keyed by name, e.g. data.sources.{}.weight
            name, _, rest = rest.partition(".")
            label = label.replace("{}", name)
        changes.append(Change(f"{label}.{rest}" if rest else label, c.old, c.new))
    upstream = []
    old_in, new_in = old.get("inputs", {}), new.get("inputs", {})
    ext_paths = {e.slot: e for e in node.external}
    for slot in sorted(set(old_in) | set(new_in)):
        a, b = old_in.get(slot), new_in.get(slot)
        if a == b:
            continue
        if slot in ext_paths or isinstance(b, dict):
            ext = ext_paths.get(slot)
            where = (ext.label or format_path(ext.spec_path)) if ext else slot
            na, nb = (a or {}).get("files"), (b or {}).get("files")
            same_bytes = a and b and a.get("contents") and a.get("contents") == b.get("contents")
            if same_bytes:  # renamed to other suffixes: read in other formats
                note = "file suffixes changed (a file's suffix tells its format)"
            else:
                note = "content changed" + (f" ({na} -> {nb} files)" if na != nb else "")
            changes.append(Change(where, a, b, note))
        elif a is None or b is None:
            changes.append(Change(f"input {slot}", a, b, "added" if a is None else "removed"))
        else:
            upstream.append(node.inputs.get(slot, slot))
    return changes, upstream


@dataclass(frozen=True)
class NodePlan:
    """The plan for one node."""

    name: str
    key: NodeKey
    status: Status
    reason: str
    changes: tuple[Change, ...] = ()
    resources: Resources = field(default_factory=Resources)
    reused: str | None = None
    """The key of the artifact early cut-off reuses for the node, whose outputs it holds."""


@dataclass(frozen=True)
class Plan:
    """The plan of a whole build."""

    spec_hash: str
    nodes: tuple[NodePlan, ...]

    def count(self, status: Status) -> int:
        return sum(1 for n in self.nodes if n.status == status)

    @property
    def summary(self) -> str:
        parts = [
            f"{len(self.nodes)} nodes",
            f"{self.count('cached')} cached",
            f"{self.count('build')} to build",
        ]
        if self.count("resume"):
            parts.append(f"{self.count('resume')} to resume")
        if self.count("running elsewhere"):
            parts.append(f"{self.count('running elsewhere')} running elsewhere")
        return ", ".join(parts)


def renamed(name: str, found: Lookup, store: StoreView) -> str:
    """Why a cached node's artifact carries another name: the node was renamed, or
    another node of the same content built it."""
    built_as = found.record.name if found.record is not None else name
    if built_as == name:
        return ""
    if store.last_preimage(name) is None:
        return f"renamed from {built_as}"
    return f"the same artifact as {built_as}"


def _short(name: str) -> str:
    """A stage node's name as a spec refers to it (``stage:base`` -> ``base``)."""
    return name.removeprefix("stage:")


def _moved_references(
    node: Node, old: Mapping[str, Any], new: Mapping[str, Any], store: StoreView
) -> list[Change]:
    """The input slots that now read another node than they did (a stage's ``from`` or
    ``teacher`` edited), named as the spec names them, where the store still knows which
    node the old input was."""
    out = []
    old_in, new_in = old.get("inputs", {}), new.get("inputs", {})
    for slot, name in node.inputs.items():
        was = old_in.get(slot)
        if not isinstance(was, str) or was == new_in.get(slot):
            continue
        record = store.lookup(was, verify=False).record
        if record is None or record.name == name:
            continue
        stage = node.name.startswith("stage:")
        field = f"{node.name.replace(':', '.', 1)}.{slot}" if stage else f"input {slot}"
        out.append(Change(field, _short(record.name), _short(name)))
    return out


def _shown_path(path: str) -> str:
    """A spec file's path as given, or relative to the working directory when below it."""
    import os

    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    return path if relative.startswith("..") else relative


def spec_hash(keys: Mapping[str, NodeKey]) -> str:
    """The hash of a build: every node name with its key (so execution-only edits, which
    change no key, change no spec hash either)."""
    return canonical_hash({name: k.key for name, k in keys.items()})


def _cut_off(
    graph: Graph,
    node: Node,
    keys: Mapping[str, NodeKey],
    held: Mapping[str, tuple[str, str]],
    store: StoreView,
) -> Record | None:
    """The artifact ``build``'s early cut-off would reuse for ``node``, if its upstreams
    are all held already."""
    target_of = getattr(store, "cutoff_target", None)
    ck = cutoff_key(graph, node, keys, held) if target_of is not None else None
    target = target_of(ck) if ck else None
    if target is None or target.key == keys[node.name].key:
        return None
    if store.lookup(target.key).state not in ("cached", "stale"):  # its outputs stand
        return None
    return target


def make_plan(
    graph: Graph,
    keys: Mapping[str, NodeKey],
    store: StoreView,
    previous: Callable[[str], dict[str, Any] | None] | None = None,
    nearest: Callable[[], tuple[str, Callable[[str], dict[str, Any] | None]] | None] | None = None,
) -> Plan:
    """Decide each node's status and reason, in topological order; a node to build is
    compared with its ``previous`` preimage (by default the store's ``last_preimage``),
    and one that has none with the same node of the ``nearest`` other spec file, if any
    (asked once, when first needed)."""
    previous = previous or store.last_preimage
    near: list[Any] = []
    plans: dict[str, NodePlan] = {}
    held: dict[str, tuple[str, str]] = {}
    """Nodes the store answers for: (output digest, key of the artifact), as ``build``'s
    early cut-off reads them."""
    for node in graph:
        k = keys[node.name]
        found = store.lookup(k.key)
        if found.cached:
            reason = renamed(node.name, found, store)
            plans[node.name] = NodePlan(node.name, k, "cached", reason, (), node.resources)
            if found.target is not None:
                held[node.name] = (found.target.output_digest, found.target.key)
            continue
        reused = (
            _cut_off(graph, node, keys, held, store)
            if found.state in ("missing", "stale")
            else None
        )
        if reused is not None:  # build reuses it the same way: its inputs' outputs are held
            reason = f"outputs of {reused.name} {reused.short} (inputs' outputs unchanged)"
            plans[node.name] = NodePlan(
                node.name, k, "cached", reason, (), node.resources, reused.key
            )
            held[node.name] = (reused.output_digest, reused.key)
            continue
        holder = store.running_elsewhere(k.key)
        if holder:
            plans[node.name] = NodePlan(
                node.name, k, "running elsewhere", holder, (), node.resources
            )
            continue
        resume = store.resumable(k.key, node.parallelism)
        status: Status = "resume" if resume else "build"
        resume = resume or store.other_layout(k.key, node.parallelism)
        changes: list[Change] = []
        old = previous(node.name)
        rebuilding = [u for u in node.upstream if plans[u].status != "cached"]
        elsewhere = ""
        if old is None and nearest is not None:
            if not near:
                near.append(nearest())
            if near[0] is not None:
                old = near[0][1](node.name)
                elsewhere = f"new to this spec; against {_shown_path(near[0][0])}: "
        if old is None:
            reason = "new"
        else:
            changes, upstream = explain(node, old, k.preimage)
            moved = _moved_references(node, old, k.preimage, store)
            changes = [*moved, *changes]
            upstream = [u for u in upstream if not any(c.new == _short(u) for c in moved)]
            if changes:  # and any upstream that changed with them (a data file, say)
                changed = [u for u in upstream if u in rebuilding]
                reason = "; ".join(
                    [str(c) for c in changes]
                    + ([f"upstream {', '.join(changed)} changed"] if changed else [])
                )
            elif upstream:
                # The last build may have used other artifacts of upstreams that are now
                # cached (a build with --set between): those did not change now.
                changed = [u for u in upstream if u in rebuilding]
                other = [u for u in upstream if u not in rebuilding]
                reason = "; ".join(
                    ([f"upstream {', '.join(changed)} changed"] if changed else [])
                    + (
                        [f"upstream {', '.join(other)} is cached, another than its last build used"]
                        if other
                        else []
                    )
                )
            else:
                reason = "not in the store"
            reason = elsewhere + reason
        if (
            old is not None
            and rebuilding
            and not changes
            and all(graph[u].cutoff for u in rebuilding)
        ):
            reason += (
                " (reused if its output is unchanged)"
                if len(rebuilding) == 1
                else " (reused if their outputs are unchanged)"
            )
        if found.state == "corrupt":  # this very key was built: nothing else changed
            reason, changes = f"the stored artifact is corrupt ({found.problem})", []
        elif found.state == "stale":
            reason, changes = f"the stored artifact is stale: {found.problem}", []
        if resume:
            reason = f"{resume}; {reason}"
        plans[node.name] = NodePlan(node.name, k, status, reason, tuple(changes), node.resources)
    return Plan(spec_hash(keys), tuple(plans.values()))
