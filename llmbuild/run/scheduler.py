"""The build loop: topological, concurrent where the graph allows, cached nodes skipped.

For each node whose inputs are ready: a verified artifact under its key is used as is; a
corrupt one is reported, moved aside and rebuilt; an early cut-off hit reuses the
artifact of an output-identical earlier build; otherwise the node's lease is taken and
the node is submitted to the executor. A failed node skips its dependents (named); the
rest of the graph still builds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from llmbuild.plan.graph import Graph, Node
from llmbuild.plan.keys import NodeKey, cutoff_key
from llmbuild.plan.status import renamed
from llmbuild.registry import Registry, default_registry
from llmbuild.run import cores
from llmbuild.run.executors import Handle, InlineExecutor, RayExecutor
from llmbuild.run.node import NodeTask
from llmbuild.store.lease import Lease, owner_info
from llmbuild.store.records import Record
from llmbuild.store.store import Store, node_ref

State = Literal["cached", "built", "reused", "failed", "skipped"]


class Reporter(Protocol):
    """What the build loop tells the user (see progress.py)."""

    def node(self, name: str, state: str, detail: str = "", seconds: float | None = None) -> None:
        """``seconds``: how long a built node ran (from its record: under Ray a node may
        wait for a worker after it is submitted)."""

    def update(self, node: str, fields: dict[str, Any]) -> None: ...


@dataclass
class NodeResult:
    name: str
    key: str
    state: State
    detail: str = ""
    record: Record | None = None
    """The record holding the node's outputs."""


def _alias_record(
    node: Node,
    k: NodeKey,
    target: Record,
    ck: str,
    upstream: Mapping[str, Record],
    build_id: str,
) -> Record:
    now = time.time()
    return Record(
        name=node.name,
        key=k.key,
        preimage=k.preimage,
        inputs={s: node_ref(r) for s, r in upstream.items()},
        alias_of=node_ref(target),
        outputs=target.outputs,
        output_digest=target.output_digest,
        cutoff_key=ck,
        metrics=target.metrics,
        build=build_id,
        timings={"started": now, "finished": now, "seconds": 0.0},
    )


class Scheduler:
    """Builds a keyed graph into a store with an executor."""

    def __init__(
        self,
        graph: Graph,
        keys: Mapping[str, NodeKey],
        store: Store,
        executor: InlineExecutor | RayExecutor,
        reporter: Reporter,
        build_id: str,
        spec_dir: Path | None = None,
        poll: float = 0.2,
        registry: Registry | None = None,
    ) -> None:
        self.graph, self.keys, self.store = graph, keys, store
        self.registry = registry or default_registry()
        self.executor, self.reporter, self.build_id = executor, reporter, build_id
        self.spec_dir, self.poll = spec_dir, poll
        self.results: dict[str, NodeResult] = {}
        self.running: dict[str, tuple[Handle, Lease]] = {}
        self.waiting: dict[str, str] = {}  # name -> the token of the lease it waits for
        self.claims: dict[str, cores.Claim] = {}  # running nodes' cores on this machine
        self._started = False

    def _finish(
        self, name: str, state: State, detail: str = "", record: Record | None = None
    ) -> None:
        self.results[name] = NodeResult(name, self.keys[name].key, state, detail, record)
        ran = record.timings.get("seconds") if state == "built" and record is not None else None
        self.reporter.node(name, state, detail, ran)

    def _artifacts(self) -> dict[str, tuple[str, str]]:
        """Built upstreams: (output digest, key of the artifact that holds the outputs)."""
        out = {}
        for n, r in self.results.items():
            if r.record is not None:
                out[n] = (r.record.output_digest, r.record.key)
        return out

    def _try_cached(self, node: Node) -> bool:
        k = self.keys[node.name]
        found = self.store.lookup(k.key)
        if found.cached and found.target is not None:
            self._finish(node.name, "cached", renamed(node.name, found, self.store), found.target)
            return True
        if found.state in ("corrupt", "stale"):
            moved = self.store.quarantine(k.key)
            self.reporter.node(
                node.name, found.state, f"{found.problem}; moved to {moved}, rebuilding"
            )
        ck = cutoff_key(self.graph, node, self.keys, self._artifacts())
        target = self.store.cutoff_target(ck) if ck else None
        if target is not None and self.store.verify(target) is None:
            upstream = {s: self.results[u].record for s, u in node.inputs.items()}
            self.store.alias(_alias_record(node, k, target, ck, upstream, self.build_id))
            self._finish(
                node.name,
                "reused",
                f"outputs of {target.name} {target.short} (inputs' outputs unchanged)",
                target,
            )
            return True
        return False

    def _start(self, node: Node) -> None:
        k = self.keys[node.name]
        if any(self.keys[n].key == k.key for n in self.running):
            return  # another node of this build has the same content: it builds for both
        lease = self.store.lease(k.key, owner_info(self.build_id))
        if lease is None:
            holder = self.store.lease_holder(k.key) or {}
            who = str(holder.get("token"))
            if self.waiting.get(node.name) != who:  # said once per holder
                self.reporter.node(
                    node.name, "waiting", self.store.running_elsewhere(k.key) or "lease held"
                )
            self.waiting[node.name] = who
            return
        self.waiting.pop(node.name, None)
        if self._try_cached(node):  # committed by another build while we waited
            lease.release()
            return
        # The key's temp dirs are the lease holder's: any there now were left by one that
        # was killed (gc would find them too, but they can be large).
        self.store.drop_scratch(node.name, k.key)
        if not self._started:
            self.executor.start()
            self._started = True
        ck = cutoff_key(self.graph, node, self.keys, self._artifacts())
        task = NodeTask(
            name=node.name,
            key=k.key,
            preimage=k.preimage,
            backend=self.registry.get(node.backend),
            config=node.config.model_dump(mode="json", by_alias=True),
            inputs={s: self.results[u].record for s, u in node.inputs.items()},
            resources=node.resources,
            store_url=self.store.url,
            work_root=str(self.store.work_root),
            build_id=self.build_id,
            cutoff_key=ck,
            external=node.external,
            spec_dir=str(self.spec_dir) if self.spec_dir else None,
        )
        resume = self.store.resumable(k.key, node.parallelism) or self.store.other_layout(
            k.key, node.parallelism
        )
        crowded = cores.oversubscribed(node.resources) if self.executor.local else None
        detail = "; ".join(d for d in (resume, crowded) if d)
        claim = (
            cores.claim(node.name, node.resources, self.store.url) if self.executor.local else None
        )
        # Inline, it runs now; elsewhere it waits for a worker (and the cores it asks
        # for), and the executor says when it starts running.
        state = "running" if self.executor.kind == "inline" else "queued"
        self.reporter.node(node.name, state, detail)
        try:  # an inline executor builds the node inside submit
            handle = self.executor.submit(task)
        except BaseException:
            lease.release()
            if claim is not None:
                claim.release()
            raise
        self.running[node.name] = (handle, lease)
        if claim is not None:
            self.claims[node.name] = claim

    def _failed_roots(self, name: str) -> list[str]:
        result = self.results.get(name)
        if result is None or result.state not in ("failed", "skipped"):
            return []
        if result.state == "failed":
            return [name]
        return [r for u in self.graph[name].upstream for r in self._failed_roots(u)]

    def _ready(self, node: Node) -> bool | None:
        """True when every input is built, None when one failed, False to wait."""
        states = [self.results[u].state if u in self.results else None for u in node.upstream]
        if any(s in ("failed", "skipped") for s in states):
            return None
        return all(s is not None for s in states)

    def run(self) -> dict[str, NodeResult]:
        try:
            return self._run()
        except BaseException:  # Ctrl-C, SIGTERM, a failing executor: let others take over
            try:
                if self._started:
                    self.executor.shutdown()  # Ray's workers end with it, mid-node
            finally:
                for name, (_, lease) in self.running.items():
                    self.store.drop_scratch(name, self.keys[name].key)
                    lease.release()
                self.running.clear()
                for claim in self.claims.values():
                    claim.release()
                self.claims.clear()
            raise

    def _run(self) -> dict[str, NodeResult]:
        pending = list(self.graph.nodes)
        while pending or self.running:
            for name in list(pending):
                if name in self.running:
                    continue
                node = self.graph[name]
                ready = self._ready(node)
                if ready is None:
                    roots = sorted({r for u in node.upstream for r in self._failed_roots(u)})
                    self._finish(name, "skipped", f"{', '.join(roots)} failed")
                    pending.remove(name)
                elif ready and (name in self.waiting or not self._try_cached(node)):
                    self._start(node)
                    if name in self.running or name in self.results:
                        pending.remove(name)
                    if name in self.running and self.executor.kind == "inline":
                        break  # built inside submit: reported before the next one runs
                elif ready:
                    pending.remove(name)
            if self.running:
                handles = [h for h, _ in self.running.values()]
                for done in self.executor.wait(handles, self.poll):
                    _, lease = self.running.pop(done.handle.name)
                    lease.release()
                    if (claim := self.claims.pop(done.handle.name, None)) is not None:
                        claim.release()
                    if done.error is not None:
                        err = done.error
                        detail = getattr(err, "message", None) or str(err)
                        if getattr(err, "log", None):
                            detail += f" (log: {err.log})"
                        self._finish(done.handle.name, "failed", detail)
                    else:
                        notes = "; ".join(done.record.notes) if done.record else ""
                        self._finish(done.handle.name, "built", notes, done.record)
            elif self.waiting and pending:
                time.sleep(self.poll)
        if self._started:
            self.executor.shutdown()
        return self.results
