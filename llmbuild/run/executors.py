"""Executors: where nodes run. ``inline`` runs each node in this process, one at a time;
``ray`` runs nodes as Ray tasks (concurrently, each with its resource request) on a
local cluster bound to 127.0.0.1 or on an existing cluster."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llmbuild.errors import UserError
from llmbuild.run.context import ProgressSink
from llmbuild.run.node import NodeFailed, NodeTask, execute_node
from llmbuild.store.records import Record

WORKER_RETRIES = 2
"""How often Ray reruns a node (or one of its parallel tasks) whose worker process died
(killed, out of memory, node lost). A node's own errors are never retried. A rerun starts
from the node's last checkpoint in its work dir; a multi-rank training node's ranks are
restarted the same way by Ray Train."""


@dataclass
class Handle:
    """A submitted node."""

    name: str
    ref: Any = None
    record: Record | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class Finished:
    handle: Handle
    record: Record | None
    error: BaseException | None


class InlineExecutor:
    """Runs each node synchronously in this process (debugging, fast tests)."""

    kind = "inline"

    def __init__(self, sink: ProgressSink | None = None) -> None:
        self.sink = sink

    def start(self) -> None:
        pass

    def submit(self, task: NodeTask) -> Handle:
        handle = Handle(task.name)
        ranks = functools.partial(_inline_ranks, resources=task.resources)
        try:
            handle.record = execute_node(task, self.sink, ranks)
        except NodeFailed as e:
            handle.error = e
        except Exception as e:  # a bug outside the backend: surface it as the node's failure
            handle.error = NodeFailed(task.name, f"{type(e).__name__}: {e}")
        handle.done = True
        return handle

    def wait(self, handles: Sequence[Handle], timeout: float) -> list[Finished]:
        return [Finished(h, h.record, h.error) for h in handles if h.done]

    def shutdown(self) -> None:
        pass


def _inline_ranks(fn: Any, config: Any, resources: Any) -> Any:
    from llmbuild.run.ranks import run_inline_ranks

    return run_inline_ranks(fn, config, resources)


def _ray_execute(task: NodeTask, relay: Any) -> dict[str, Any]:
    """The Ray task body: build one node in a worker process."""
    from pathlib import Path

    from llmbuild.store.store import Store

    work = Store(task.store_url, work_root=Path(task.work_root)).work_dir(task.key)
    ranks = functools.partial(_ray_ranks, resources=task.resources, work_dir=work, name=task.name)
    return execute_node(
        task, _RelaySink(relay) if relay is not None else None, ranks, _ray_parallel
    )


def _ray_parallel(fn: Any, items: list[Any]) -> list[Any]:
    """Ray tasks on this node (their outputs may be local files), results in order."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    remote = ray.remote(fn).options(
        num_cpus=1, scheduling_strategy=here, max_retries=WORKER_RETRIES
    )
    return ray.get([remote.remote(item) for item in items])


def _ray_ranks(fn: Any, config: Any, resources: Any, work_dir: Any, name: str) -> Any:
    from llmbuild.run.ranks import run_inline_ranks, run_ray_ranks

    if resources.ranks == 1:  # one rank: in this task's process, no trainer to start
        return run_inline_ranks(fn, config, resources)
    return run_ray_ranks(fn, config, resources, work_dir, name)


class _RelaySink:
    def __init__(self, relay: Any) -> None:
        self.relay = relay

    def update(self, node: str, fields: dict[str, Any]) -> None:
        self.relay.update.remote(node, fields)


class _Relay:
    """A Ray actor collecting progress updates from workers for the driver to drain."""

    def __init__(self) -> None:
        self.pending: dict[str, dict[str, Any]] = {}

    def update(self, node: str, fields: dict[str, Any]) -> None:
        self.pending[node] = fields

    def drain(self) -> dict[str, dict[str, Any]]:
        out, self.pending = self.pending, {}
        return out


@dataclass
class RayExecutor:
    """Runs nodes as Ray tasks; starts a local cluster unless given an address."""

    address: str | None = None
    sink: ProgressSink | None = None
    num_cpus: int | None = None
    kind: str = "ray"
    _started_here: bool = field(default=False, init=False)
    _relay: Any = field(default=None, init=False)
    _remote: Any = field(default=None, init=False)

    def start(self) -> None:
        import ray

        address = self.address or os.environ.get("RAY_ADDRESS")
        try:
            self._init(ray, address)
        except Exception as e:  # a machine too loaded for Ray, a cluster that is not there
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise UserError(
                f"could not start {where}: {type(e).__name__}: {e}; check the address and "
                "that Ray runs here, or build without Ray: --executor inline"
            ) from None
        from llmbuild.run.signals import on_sigterm_interrupt

        on_sigterm_interrupt()  # ray.init put its own SIGTERM handler (a raw dump) in place
        self._relay = self._new_relay()
        self._remote = ray.remote(_ray_execute)

    @staticmethod
    def _new_relay() -> Any:
        """The progress relay, on this process's own node: a cluster node that goes away
        must not take the build's progress with it."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        return ray.remote(num_cpus=0)(_Relay).options(scheduling_strategy=here).remote()

    def _init(self, ray: Any, address: str | None) -> None:
        if not ray.is_initialized():
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                start_local_ray(self.num_cpus)
                self._started_here = True

    def submit(self, task: NodeTask) -> Handle:
        res = task.resources
        if res.whole_machine:  # as many cores as the largest machine of the cluster has
            res = replace(res, cpus=min(res.cpus, _largest_machine_cpus()))
            task = replace(task, resources=res)
        if res.ranks > 1:  # a coordinator: the ranks ask for the resources themselves
            options = {"num_cpus": 0, "num_gpus": 0}
        else:
            from llmbuild.run.ranks import unplaceable

            problem = unplaceable(res)
            if problem is not None:  # Ray would wait for a machine that may never come
                return Handle(task.name, error=NodeFailed(task.name, problem), done=True)
            options = {"num_cpus": res.cpus, "num_gpus": res.gpus}
        ref = self._remote.options(
            **options, max_retries=WORKER_RETRIES, name=f"llmbuild {task.name}"
        ).remote(task, self._relay)
        return Handle(task.name, ref=ref)

    def wait(self, handles: Sequence[Handle], timeout: float) -> list[Finished]:
        import ray

        self._drain()
        refused = [Finished(h, None, h.error) for h in handles if h.done and h.ref is None]
        if refused:  # at submission
            return refused
        refs = {h.ref: h for h in handles if not h.done}
        if not refs:
            return []
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=timeout)
        finished = []
        for ref in ready:
            h = refs[ref]
            h.done = True
            try:
                h.record = ray.get(ref)
            except NodeFailed as e:
                h.error = e
            except ray.exceptions.RayTaskError as e:
                cause = e.as_instanceof_cause()
                h.error = cause if isinstance(cause, NodeFailed) else NodeFailed(h.name, str(cause))
            except ray.exceptions.RayError as e:
                h.error = NodeFailed(h.name, f"the Ray worker died: {type(e).__name__}")
            finished.append(Finished(h, h.record, h.error))
        self._drain()
        return finished

    def _drain(self) -> None:
        if self.sink is None or self._relay is None:
            return
        import ray

        try:
            pending = ray.get(self._relay.drain.remote())
        except ray.exceptions.RayError:  # its node is gone: progress since is lost, not the build
            self._relay = self._new_relay()
            return
        for node, fields in pending.items():
            self.sink.update(node, fields)

    def shutdown(self) -> None:
        import ray

        if self._started_here and ray.is_initialized():
            ray.shutdown()


def _largest_machine_cpus() -> float:
    import ray

    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)


def start_local_ray(num_cpus: int | None = None) -> None:
    """Start a Ray cluster of this process's own on this machine, bound to 127.0.0.1."""
    import ray

    from llmbuild.run.ranks import local_ray_env

    local_ray_env()
    # A local cluster keeps Ray's default token authentication; its notice that the
    # default is on is not for our users.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    ray.init(
        address="local",  # a cluster of its own, never one `ray start` left here
        include_dashboard=False,
        num_cpus=num_cpus,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": _forwarded_env()},
    )


def _forwarded_env() -> dict[str, str]:
    """Environment a local cluster's workers need from the driver."""
    keep = ("LLMBUILD_", "HF_", "PYTHONPATH")
    return {k: v for k, v in os.environ.items() if k.startswith(keep)}


def make_executor(
    kind: str, sink: ProgressSink | None = None, address: str | None = None
) -> InlineExecutor | RayExecutor:
    if kind == "inline":
        return InlineExecutor(sink)
    if kind == "ray":
        return RayExecutor(address=address, sink=sink)
    raise ValueError(f"unknown executor {kind!r}")
