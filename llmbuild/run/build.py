"""``build``: plan a spec against the store, run what is missing, record the build."""

from __future__ import annotations

import contextlib
import errno
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from llmbuild.plan import Planned, plan_spec
from llmbuild.plan.graph import Graph
from llmbuild.plan.keys import NodeKey
from llmbuild.registry import Registry
from llmbuild.run.executors import ClusterLost, local_cpus, make_executor
from llmbuild.run.progress import PlainReporter, make_reporter
from llmbuild.run.scheduler import NodeResult, Reporter, Scheduler
from llmbuild.spec.load import ResolvedSpec
from llmbuild.store.gc import clear_killed
from llmbuild.store.lease import owner_info
from llmbuild.store.records import SCHEMA_VERSION, environment
from llmbuild.store.store import Store


@dataclass(frozen=True)
class BuildOptions:
    """How to run a build (never what it builds)."""

    executor: str = "ray"
    ray_address: str | None = None
    only: tuple[str, ...] = ()
    until: tuple[str, ...] = ()
    live: bool | None = None
    """Live terminal view; None: when stdout is a terminal."""


@dataclass
class BuildOutcome:
    spec_hash: str
    build_id: str
    results: dict[str, NodeResult]
    planned: Planned
    record: dict[str, Any] = field(default_factory=dict)
    unrecorded: str | None = None
    """Why the build could not be recorded in the store (a read-only store, when every
    node was cached there)."""

    @property
    def ok(self) -> bool:
        return all(r.state not in ("failed", "skipped") for r in self.results.values())

    def count(self, state: str) -> int:
        return sum(1 for r in self.results.values() if r.state == state)

    @property
    def summary(self) -> str:
        parts = [f"{len(self.results)} nodes"]
        for state in ("cached", "built", "reused", "failed", "skipped"):
            if self.count(state):
                parts.append(f"{self.count(state)} {state}")
        return ", ".join(parts)


def run_graph(
    graph: Graph,
    keys: dict[str, NodeKey],
    store: Store,
    options: BuildOptions,
    reporter: Reporter | None,
    build_id: str,
    spec_dir: Any = None,
    registry: Registry | None = None,
    results: dict[str, NodeResult] | None = None,
) -> dict[str, NodeResult]:
    """Build a keyed graph into a store; the executor starts only if a node must run.
    ``results`` is filled as nodes finish (what an interrupted build had done)."""
    own = reporter is None
    rep = reporter or make_reporter(list(graph.nodes), options.live)
    try:
        executor = make_executor(options.executor, rep, options.ray_address, local_cpus(graph))
        scheduler = Scheduler(
            graph, keys, store, executor, rep, build_id, spec_dir, registry=registry
        )
        if results is not None:
            scheduler.results = results
        return scheduler.run()
    finally:
        if own:
            rep.close()


def build(
    resolved: ResolvedSpec,
    store: Store,
    options: BuildOptions = BuildOptions(),
    reporter: Reporter | None = None,
    registry: Registry | None = None,
) -> BuildOutcome:
    """Build a resolved spec; record the build under its spec hash."""
    started = time.time()
    build_id = uuid.uuid4().hex
    planned = plan_spec(resolved, store=store, cache=store.cache, registry=registry)
    graph = planned.graph.select(options.only, options.until)
    status = {n.name: n.status for n in planned.plan.nodes}
    cached = all(status[n] == "cached" for n in graph.nodes)  # nothing to write
    # The lists of builds of this host that were killed (kill -9) would name their keys
    # until a gc; another host's are left to gc, for only a heartbeat tells of them.
    with contextlib.suppress(OSError):  # a read-only store: nothing can be cleared
        clear_killed(store, ("running",), this_host=True)
    if not cached:  # a work root that cannot be made (a remote store's is in the cache
        # dir) fails the build here, once, not each node as it starts
        (store.work_root / "work").mkdir(parents=True, exist_ok=True)
    try:
        running = store.announce(
            build_id, [planned.keys[n].key for n in graph.nodes], owner_info(build_id)
        )
    except OSError as e:
        if not (cached and e.errno in (errno.EROFS, errno.EACCES)):
            raise
        running = None  # a read-only store holding all of it: read, not recorded
    results: dict[str, NodeResult] = {}
    try:
        run_graph(
            graph, planned.keys, store, options, reporter, build_id, resolved.path.parent,
            registry, results,
        )  # fmt: skip
    except (KeyboardInterrupt, ClusterLost):  # Ctrl-C, SIGTERM, a cluster gone: the build
        # is recorded as interrupted
        outcome = BuildOutcome(planned.plan.spec_hash, build_id, results, planned)
        outcome.record = _build_record(resolved, planned, outcome, options, started, store)
        outcome.record.update(interrupted=True, ok=False)
        for name in graph.nodes:
            if name not in results:
                outcome.record["nodes"][name]["state"] = "interrupted"
                _log_interrupted(store, planned.keys[name].key)
        store.save_build(outcome.record)
        raise
    finally:
        if running is not None:
            running.release()
    outcome = BuildOutcome(planned.plan.spec_hash, build_id, results, planned)
    outcome.record = _build_record(resolved, planned, outcome, options, started, store)
    try:
        store.save_build(outcome.record)
    except OSError as e:
        if not (cached and e.errno in (errno.EROFS, errno.EACCES)):
            raise
        outcome.unrecorded = f"the store cannot be written ({e.strerror})"
    store.cache.save()
    return outcome


def _log_interrupted(store: Store, key: str) -> None:
    """End a started node's log with its interruption: a worker process stopped with the
    build has no chance to say so itself."""
    log = store.work_dir(key, create=False) / "node.log"
    try:
        if not log.is_file():
            return  # the node had not started
        last = log.read_text(errors="replace").rstrip().rpartition("\n")[2]
        if " ERROR interrupted" not in last:  # the node's own process said it already
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with log.open("a") as f:
                f.write(
                    f"{stamp} ERROR interrupted: the build was stopped before this node ended\n"
                )
    except OSError:
        pass  # a log that cannot be written loses only this line


def _build_record(
    resolved: ResolvedSpec,
    planned: Any,
    outcome: BuildOutcome,
    options: BuildOptions,
    started: float,
    store: Store,
) -> dict[str, Any]:
    results = outcome.results
    nodes = {
        name: {
            "key": k.key,
            "state": results[name].state if name in results else "not selected",
            "output_digest": results[name].record.output_digest
            if name in results and results[name].record is not None
            else None,
        }
        for name, k in planned.keys.items()
    }
    _record_layouts(nodes, planned, store.find_build(planned.plan.spec_hash))
    return {
        "schema_version": SCHEMA_VERSION,
        "spec_hash": planned.plan.spec_hash,
        "build": outcome.build_id,
        "spec_path": str(resolved.path),
        "spec": resolved.spec.model_dump(mode="json", by_alias=True),
        "nodes": nodes,
        "selection": {"only": list(options.only), "until": list(options.until)},
        "environment": environment(resolved.path.parent),
        "started": started,
        "finished": time.time(),
        "ok": outcome.ok,
    }


def _record_layouts(
    nodes: dict[str, dict[str, Any]], planned: Any, before: dict[str, Any] | None
) -> None:
    """Each training node's ``[parallelism]`` as it was trained: this build's for a node
    it built, the earlier record's for one it found cached (a layout is not in keys, so a
    build at another layout finds every stage cached; reproduce trains at the recorded
    one)."""
    earlier = (before or {}).get("nodes", {})
    for name, node in nodes.items():
        par = planned.graph[name].parallelism if name in planned.graph.nodes else None
        if par is None:
            continue
        old = earlier.get(name, {})
        if node["state"] == "built":
            node["parallelism"] = par.model_dump(mode="json")
        elif old.get("key") == node["key"] and old.get("parallelism") is not None:
            node["parallelism"] = old["parallelism"]


__all__ = ["BuildOptions", "BuildOutcome", "PlainReporter", "build", "run_graph"]
