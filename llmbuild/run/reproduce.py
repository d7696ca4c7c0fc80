"""``reproduce HASH``: rebuild a recorded build from scratch and compare, node by node.

Every node is rebuilt into a scratch store from the resolved spec the build recorded.
A node is *identical* when its outputs are byte-identical (same output digest), *within
tolerance* when its outputs differ but every recorded metric agrees within the relative
tolerance, and *diverged* otherwise; an original whose files no longer match its record
is *corrupt*, compared with nothing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from llmbuild.errors import UserError, format_path
from llmbuild.plan import compile_plan, node_keys
from llmbuild.plan.graph import Graph
from llmbuild.plan.inputs import external_digests
from llmbuild.plan.keys import NodeKey
from llmbuild.plan.status import explain
from llmbuild.registry import Registry
from llmbuild.run.build import BuildOptions, run_graph
from llmbuild.run.scheduler import Reporter
from llmbuild.spec.root import spec_model
from llmbuild.store.records import Record
from llmbuild.store.store import Store

Verdict = Literal["identical", "within tolerance", "diverged", "failed", "missing", "corrupt"]


@dataclass(frozen=True)
class Comparison:
    node: str
    verdict: Verdict
    detail: str = ""


def _numbers(value: Any, prefix: str = "") -> dict[str, float]:
    if isinstance(value, bool):
        return {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)}
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_numbers(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(_numbers(v, f"{prefix}[{i}]"))
    return out


def _speed(metric: str) -> bool:
    """A measure of how fast a node ran (``tokens_per_s``), not of what it made: never
    the same twice, so not compared."""
    return metric.rpartition(".")[2].endswith("_per_s")


def compare(node: str, old: Record | None, new: Record | None, rtol: float) -> Comparison:
    if new is None:
        return Comparison(node, "failed", "the rebuild did not produce it")
    if old is None:
        return Comparison(node, "missing", "the original artifact is no longer in the store")
    if old.output_digest == new.output_digest:
        return Comparison(node, "identical")
    a, b = ({k: v for k, v in _numbers(r.metrics).items() if not _speed(k)} for r in (old, new))
    files = {e.path: e.blake3 for e in old.outputs}
    differ = [e.path for e in new.outputs if files.get(e.path) != e.blake3]
    more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
    where = f"{len(differ)} output file(s) differ: {', '.join(differ[:3])}{more}"
    if not a or a.keys() != b.keys():
        return Comparison(node, "diverged", where)
    deltas = {k: abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a}
    worst = max(deltas, key=lambda k: deltas[k])
    if all(math.isfinite(d) and d <= rtol for d in deltas.values()):
        return Comparison(
            node,
            "within tolerance",
            f"{where}; metrics agree (largest relative delta {deltas[worst]:.2e} in {worst})",
        )
    return Comparison(node, "diverged", f"{where}; metric {worst} {a[worst]:.6g} -> {b[worst]:.6g}")


def _recorded_layout(build: dict[str, Any], spec: Any) -> Any:
    """The spec with the ``[parallelism]`` its training stages were trained at, where the
    build recorded one for them all: a later build at another layout finds them cached
    and records its own spec."""
    par = getattr(spec, "parallelism", None)
    layouts = {
        json.dumps(node["parallelism"], sort_keys=True)
        for node in build["nodes"].values()
        if node.get("parallelism") is not None
    }
    if par is None or len(layouts) != 1:
        return spec
    recorded = type(par).model_validate(json.loads(layouts.pop()))
    return spec.model_copy(update={"parallelism": recorded})


def _recorded_threads(store: Store, build: dict[str, Any], spec: Any) -> Any:
    """The spec with the threads per rank its training stages were built with: a CPU's
    sums depend on how they are split over threads, and an unset ``cpus_per_rank``
    follows the cores of the machine that builds."""
    par = getattr(spec, "parallelism", None)
    if par is None or par.cpus_per_rank is not None:
        return spec
    threads = set()
    for node in build["nodes"].values():
        target = store.lookup(node["key"], verify=False).target
        if target is not None and "rank0.threads" in target.timings:
            threads.add(int(target.timings["rank0.threads"]))
    if len(threads) != 1:
        return spec
    recorded = threads.pop()
    if par.rank_cpus() == recorded:  # as it is unset here: kept so, which lets a local
        return spec  # cluster run more ranks than this machine has cores, a thread each
    return spec.model_copy(
        update={"parallelism": par.model_copy(update={"cpus_per_rank": recorded})}
    )


def _recorded_machine_threads(store: Store, build: dict[str, Any], graph: Graph) -> Graph:
    """The graph with each node that computes on the whole machine (an eval, an export)
    given the threads it was built with (``threads`` in its timings), as training stages
    are given theirs."""
    nodes = []
    for node in graph:
        recorded = build["nodes"].get(node.name)
        if node.resources.whole_machine and recorded is not None:
            target = store.lookup(recorded["key"], verify=False).target
            threads = target.timings.get("threads") if target is not None else None
            if threads:
                node = replace(node, resources=replace(node.resources, cpus=threads))
        nodes.append(node)
    return Graph(nodes)


def _changed_since(
    store: Store, build: dict[str, Any], graph: Graph, keys: dict[str, NodeKey]
) -> str | None:
    """What changed since the build was recorded, where the change enters: each node
    whose own inputs changed (a data file's content, a backend's version), as ``plan``
    explains it against the recorded preimage, and how many nodes are made from them;
    None when every key is the recorded one."""
    recorded = {n: v["key"] for n, v in build["nodes"].items()}
    changed = [n for n in graph.nodes if recorded.get(n) != keys[n].key]
    if not changed:
        return None
    spec_dir = Path(build["spec_path"]).parent
    entries: dict[str, list[str]] = {}  # what changed -> the nodes it enters at
    for name in changed:
        node = graph[name]
        was = store.lookup(recorded[name], verify=False).record if name in recorded else None
        causes = explain(node, was.preimage, keys[name].preimage)[0] if was else []
        if causes or not any(u in changed for u in node.upstream):
            files = {e.label or format_path(e.spec_path): e.patterns for e in node.external}
            said = [
                f"{c} ({', '.join(_below(p, spec_dir) for p in files[c.field])})"
                if c.field in files
                else str(c)
                for c in causes
            ]
            entries.setdefault(", ".join(said), []).append(name)
    first = sum(len(names) for names in entries.values())
    more = len(changed) - first
    made = f"{more} node{'s' if more > 1 else ''} made from {'it' if first == 1 else 'them'}"
    parts = [
        f"{', '.join(names)}: {cause}" if cause else ", ".join(names)
        for cause, names in entries.items()
    ]
    return "; ".join(parts) + (f"; and {made}" if more else "")


def _below(path: str, folder: Path) -> str:
    """A path relative to ``folder`` where it lies below it (a data file beside its spec)."""
    if "://" in path:
        return path
    relative = os.path.relpath(path, folder)
    return path if relative.startswith("..") else relative


def _holds_artifacts(folder: Path) -> bool:
    """Whether a local folder is a store with a built node in it."""
    artifacts = Path(folder) / "artifacts"
    return artifacts.is_dir() and any(artifacts.iterdir())


def reproduce(
    store: Store,
    spec_hash: str,
    options: BuildOptions,
    rtol: float = 1e-3,
    scratch: Path | None = None,
    reporter: Reporter | None = None,
    registry: Registry | None = None,
) -> tuple[dict[str, Any], list[Comparison]]:
    """Rebuild the build recorded under ``spec_hash`` (a prefix will do) and compare."""
    build = store.find_build(spec_hash)
    if build is None:
        known = ", ".join(b["spec_hash"][:12] for b in store.builds()[-5:]) or "none"
        raise UserError(
            f"no single build with spec hash {spec_hash!r} in {store.url} (recent: {known})"
        )
    spec = spec_model(registry).model_validate(build["spec"])
    spec = _recorded_threads(store, build, _recorded_layout(build, spec))
    graph = _recorded_machine_threads(store, build, compile_plan(spec, registry))
    keys = node_keys(graph, external_digests(graph, store.cache)[0])
    changed = _changed_since(store, build, graph, keys)
    if changed:
        raise UserError(
            f"the inputs of this build changed since it was recorded, so it cannot be "
            f"reproduced: {changed}"
        )
    graph = graph.select(
        tuple(n for n, v in build["nodes"].items() if v.get("state") != "not selected")
    )
    if scratch is not None and _holds_artifacts(scratch):
        raise UserError(
            f"the scratch store {scratch} already holds built nodes: reproduce rebuilds "
            "every node from nothing, and would find them there instead (a kept scratch "
            "store, or the store itself); give an empty or new folder, or leave --scratch "
            "out for a temporary one"
        )
    made = scratch is None  # a temp dir of its own is removed once all went well
    scratch = scratch or Path(tempfile.mkdtemp(prefix="llmbuild-reproduce-"))
    done = False
    try:
        fresh = Store(str(scratch), cache=store.cache)
        results = run_graph(
            graph,
            keys,
            fresh,
            options,
            reporter,
            uuid.uuid4().hex,
            Path(build["spec_path"]).parent,
            registry,
        )
        comparisons = []
        for name in graph.nodes:
            found = store.lookup(keys[name].key)  # the files, not only their record
            if found.state == "corrupt":
                comparisons.append(
                    Comparison(
                        name,
                        "corrupt",
                        f"the original artifact is corrupt ({found.problem}): nothing to "
                        "compare the rebuild with",
                    )
                )
                continue
            comparison = compare(name, found.target, results[name].record, rtol)
            if results[name].record is None:  # why, and where its log and checkpoint stay
                why = results[name].detail or results[name].state
                comparison = replace(
                    comparison, detail=f"the rebuild did not produce it: {why} (the scratch "
                    f"store {scratch} is kept; remove it when done)"
                )  # fmt: skip
            comparisons.append(comparison)
        done = all(r.record is not None for r in results.values())
    except BaseException:  # Ctrl-C, SIGTERM, a cluster that did not start: nothing in it
        done = True  # is worth keeping (a node that failed is in the results, not raised)
        raise
    finally:
        if made and done:  # a failed node's log stays where its message says
            shutil.rmtree(scratch, ignore_errors=True)
    return build, comparisons
