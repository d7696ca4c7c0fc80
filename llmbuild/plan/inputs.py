"""Resolve the external inputs of a graph to content digests, reporting every missing one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmbuild.errors import Path, Problem, SpecError
from llmbuild.plan.digest import MissingInput, StatCache
from llmbuild.plan.graph import Graph

Locate = Callable[[Problem], Problem]


def external_digests(
    graph: Graph, cache: StatCache, locate: Locate = lambda p: p, missing_ok: bool = False
) -> tuple[dict[str, dict[str, Any]], dict[str, Problem]]:
    """``node -> slot -> digest`` for every external input; a SpecError lists every path
    that matches nothing, located at the spec key naming it. With ``missing_ok`` those
    are returned instead, as ``node -> problem``, and the node has no digests."""
    out: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    missing: dict[str, Problem] = {}
    seen: set[Path] = set()
    for node in graph:
        for ext in node.external:
            try:
                out.setdefault(node.name, {})[ext.slot] = ext.digest(cache)
            except MissingInput as e:
                problem = locate(Problem(str(e), ext.spec_path))
                if missing_ok:
                    missing.setdefault(node.name, problem)
                elif ext.spec_path not in seen:
                    seen.add(ext.spec_path)
                    problems.append(problem)
            except OSError as e:
                problems.append(locate(Problem(f"cannot read: {e}", ext.spec_path)))
    cache.save()
    if problems:
        raise SpecError(problems)
    return out, missing
