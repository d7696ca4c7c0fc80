"""The planner: resolved spec -> graph of keyed nodes -> plan. Nothing here runs a node."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from llmbuild.errors import Problem, UserError
from llmbuild.plan.compile import compile_plan
from llmbuild.plan.digest import StatCache
from llmbuild.plan.graph import Graph, Node
from llmbuild.plan.inputs import external_digests
from llmbuild.plan.keys import NodeKey, node_keys
from llmbuild.plan.status import EmptyStore, Plan, StoreView, make_plan
from llmbuild.registry import Registry
from llmbuild.spec.load import ResolvedSpec, locate


@dataclass(frozen=True)
class Planned:
    """A compiled, keyed and planned build."""

    graph: Graph
    keys: dict[str, NodeKey]
    plan: Plan
    unavailable: dict[str, Problem] = field(default_factory=dict)
    """Nodes left out because a file they read (or an upstream reads) is missing, each
    with that file's problem; only where the spec was loaded with ``missing_ok``."""
    names: tuple[str, ...] = ()
    """Every node of the spec, in order, those left out included."""

    def key_of(self, name: str) -> NodeKey:
        """The key of node ``name``; a ``UserError`` when a missing file left it out."""
        if name in self.unavailable:
            raise UserError(
                f"{name} cannot be looked up: it is made from a file that is missing "
                f"({self.unavailable[name]}); put the file back where the spec says"
            )
        return self.keys[name]

    def held_key(self, name: str) -> str:
        """The key whose artifact holds node ``name``'s outputs: its own, or the one the
        build's early cut-off reuses (as the plan says it is cached)."""
        key = self.key_of(name).key
        return self._reused.get(name) or key

    @cached_property
    def _reused(self) -> dict[str, str]:
        return {n.name: n.reused for n in self.plan.nodes if n.reused}


def plan_spec(
    resolved: ResolvedSpec,
    store: StoreView | None = None,
    cache: StatCache | None = None,
    registry: Registry | None = None,
) -> Planned:
    """Compile, key and plan a resolved spec against a store (empty by default)."""
    graph = compile_plan(resolved.spec, registry)
    names = tuple(n.name for n in graph)
    externals, missing = external_digests(
        graph, cache or StatCache(), lambda p: locate(p, resolved), bool(resolved.missing)
    )
    unavailable: dict[str, Problem] = {}
    for node in graph:  # a missing file leaves out its readers and all they feed
        reason = missing.get(node.name) or next(
            (unavailable[u] for u in node.upstream if u in unavailable), None
        )
        if reason is not None:
            unavailable[node.name] = reason
    if unavailable:
        graph = Graph(n for n in graph if n.name not in unavailable)
    keys = node_keys(graph, externals)
    store = store or EmptyStore()
    # compared with what this spec file built last, where the store knows it
    of_spec = getattr(store, "spec_preimages", None)
    previous = of_spec(str(resolved.path)) if of_spec else None
    nearest = None
    if hasattr(store, "nearest_spec"):  # for a spec new to the store: its nearest other

        def nearest() -> Any:
            from llmbuild.plan.status import field_changes

            here = {name: k.key for name, k in keys.items()}

            def distance(name: str, old: dict[str, Any]) -> int:
                return len(field_changes(old, keys[name].preimage))

            return store.nearest_spec(str(resolved.path), here, distance)

    plan = make_plan(graph, keys, store, previous, nearest)
    return Planned(graph, keys, plan, unavailable, names)


__all__ = [
    "Graph",
    "Node",
    "NodeKey",
    "Plan",
    "Planned",
    "StatCache",
    "compile_plan",
    "node_keys",
    "plan_spec",
]
