"""The planner: resolved spec -> graph of keyed nodes -> plan. Nothing here runs a node."""

from __future__ import annotations

from dataclasses import dataclass

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


def plan_spec(
    resolved: ResolvedSpec,
    store: StoreView | None = None,
    cache: StatCache | None = None,
    registry: Registry | None = None,
) -> Planned:
    """Compile, key and plan a resolved spec against a store (empty by default)."""
    graph = compile_plan(resolved.spec, registry)
    externals = external_digests(graph, cache or StatCache(), lambda p: locate(p, resolved))
    keys = node_keys(graph, externals)
    store = store or EmptyStore()
    # compared with what this spec file built last, where the store knows it
    of_spec = getattr(store, "spec_preimages", None)
    previous = of_spec(str(resolved.path)) if of_spec else None
    return Planned(graph, keys, make_plan(graph, keys, store, previous))


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
