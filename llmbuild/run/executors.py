"""Executors: where nodes run. ``inline`` runs each node in this process, one at a time;
``ray`` runs nodes as Ray tasks (concurrently, each with its resource request) on a
local cluster bound to 127.0.0.1 or on an existing cluster."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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

DRAIN_S = 0.5
"""How often the driver reads the nodes' progress from the cluster (a worker publishes its
node's at most every 0.25 s)."""
HEAD_CHECK_S = 1.0
"""How often a waiting build checks that the cluster's head still answers: Ray itself
waits 60 s for a lost head, then ends the process with no word of what it was doing."""
HEAD_SILENT_S = 30.0
"""How long a head that does not answer at all (a network that drops the packets, not a
refused connection) may stay silent before the build stops."""


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
    local = True
    """Its nodes compute on this machine."""

    def __init__(self, sink: ProgressSink | None = None) -> None:
        self.sink = sink

    def start(self) -> None:
        pass

    def submit(self, task: NodeTask) -> Handle:
        handle = Handle(task.name)
        cores = os.cpu_count() or 1
        if task.resources.cpus > cores:  # as a local Ray cluster refuses it: so many
            # threads on fewer cores would run many times slower
            handle.error = NodeFailed(
                task.name,
                f"this machine has {cores} cores, and each rank of this node asks for "
                f"{task.resources.cpus:g} (parallelism.cpus_per_rank): set it to {cores} "
                "or fewer",
            )
            handle.done = True
            return handle
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


def _ray_execute(task: NodeTask, progress: str | None) -> dict[str, Any]:
    """The Ray task body: build one node in a worker process, its progress published in
    the ``progress`` namespace of the cluster's key-value store."""
    from pathlib import Path

    from llmbuild.store.store import Store

    work = Store(task.store_url, work_root=Path(task.work_root)).work_dir(task.key)
    ranks = functools.partial(_ray_ranks, resources=task.resources, work_dir=work, name=task.name)
    sink = _ProgressSink(progress) if progress is not None else None
    if sink is not None:  # the driver shows the node running from now, not when queued
        sink.update(task.name, {})
    return execute_node(task, sink, ranks, _ray_parallel)


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


class _ProgressSink:
    """A worker's progress updates, each node's latest under its name in the Ray cluster's
    key-value store (held by the head node's GCS), for the driver to read. Ray's own
    store: no process of ours stays up for it, waking the machine the ranks train on."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def update(self, node: str, fields: dict[str, Any]) -> None:
        from ray.experimental.internal_kv import _internal_kv_put

        try:
            _internal_kv_put(node, json.dumps(fields, default=str), namespace=self.namespace)
        except Exception:  # progress is for show: never a reason for a node to fail
            pass


PROBE_S = 5.0
"""How long a cluster's address gets to answer before the build says it is not there (Ray
itself retries for minutes, deaf to Ctrl-C)."""


def _reachable(address: str) -> None:
    """Raises unless something listens at ``host:port`` (``ray://`` or not); ``auto`` and
    ``local`` name no address to try."""
    import socket

    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        if where in ("auto", "local"):
            return
        raise ValueError(f"{address!r} is not host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_S).close()
    except OSError as e:
        raise _Unanswered(f"nothing answers at {where} ({e.strerror or e})") from None


def _loopback(address: str) -> bool:
    """Whether ``host:port`` (``ray://`` or not) names this machine's loopback."""
    host = address.split("://", 1)[-1].rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


class _Unanswered(ConnectionError):
    """Nothing listens at the cluster's address."""


@dataclass
class RayExecutor:
    """Runs nodes as Ray tasks; starts a local cluster unless given an address."""

    address: str | None = None
    sink: ProgressSink | None = None
    num_cpus: int | None = None
    kind: str = "ray"
    _started_here: bool = field(default=False, init=False)
    _progress: str | None = field(default=None, init=False)
    _shown: dict[str, bytes] = field(default_factory=dict, init=False)
    _begun: set[str] = field(default_factory=set, init=False)
    _drained: float = field(default=0.0, init=False)
    _remote: Any = field(default=None, init=False)
    _head: tuple[str, int] | None = field(default=None, init=False)
    _head_checked: float = field(default=0.0, init=False)
    _head_misses: int = field(default=0, init=False)
    _head_silent: float | None = field(default=None, init=False)
    _lost: bool = field(default=False, init=False)

    def start(self) -> None:
        import ray

        address = self.address or os.environ.get("RAY_ADDRESS")
        try:
            self._init(ray, address)
        except Exception as e:  # a machine too loaded for Ray, a cluster that is not there
            raise UserError(_not_started(address, e)) from None
        from llmbuild.run.signals import on_sigterm_interrupt

        on_sigterm_interrupt()  # ray.init put its own SIGTERM handler (a raw dump) in place
        if self.sink is not None:  # this build's own namespace: a shared cluster hosts others
            self._progress = f"llmbuild-progress-{uuid.uuid4().hex}"
        self._remote = ray.remote(_ray_execute)
        with contextlib.suppress(Exception):  # another Ray: no check, as before
            host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
            self._head = (host.strip("[]"), int(port))

    def _head_missing(self, fresh: bool = False) -> bool:
        """Whether the cluster's head (its GCS) failed the last check, which runs every
        HEAD_CHECK_S (a socket a check), and ``fresh`` right before a call to it; raise
        ``ClusterLost`` once its machine has refused the connection twice in a row, a
        check apart (nothing listens there any more), or it has not answered at all for
        HEAD_SILENT_S. While it may be gone, nothing asks it anything: a call would wait
        a minute for it, and then Ray ends the process."""
        now = time.monotonic()
        may_be_gone = self._head_misses > 0 or self._head_silent is not None
        if self._head is None:
            return False
        if now - self._head_checked < HEAD_CHECK_S and (may_be_gone or not fresh):
            return may_be_gone
        self._head_checked = now
        try:
            socket.create_connection(self._head, timeout=PROBE_S).close()
            self._head_misses, self._head_silent = 0, None
        except ConnectionRefusedError:
            self._head_misses += 1
        except OSError:  # no answer: a network that may come back
            self._head_silent = self._head_silent or now
        silent = self._head_silent is not None and now - self._head_silent >= HEAD_SILENT_S
        if self._head_misses >= 2 or silent:
            self._lost = True
            where = "the local Ray cluster" if self._started_here else "the Ray cluster"
            raise ClusterLost(
                f"{where} went away: its head no longer answers at "
                f"{self._head[0]}:{self._head[1]}. The nodes being built stopped; each "
                "keeps its checkpoint, and the next build resumes from it once a cluster "
                "is up"
            )
        return self._head_misses > 0 or self._head_silent is not None

    def _gone(self) -> bool:
        """``_head_missing(fresh=True)``, ``ClusterLost`` read as True (for shutdown)."""
        try:
            return self._head_missing(fresh=True)
        except ClusterLost:
            return True

    @property
    def local(self) -> bool:
        """Its nodes compute on this machine: a cluster it started here."""
        return self._started_here

    def _init(self, ray: Any, address: str | None) -> None:
        if not ray.is_initialized():
            if address:
                _reachable(address)
                if _loopback(address):  # a cluster on this machine's 127.0.0.1: Ray would
                    from llmbuild.run.ranks import local_ray_env  # take it for the NIC's

                    local_ray_env()
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
        ).remote(task, self._progress)
        return Handle(task.name, ref=ref)

    def wait(self, handles: Sequence[Handle], timeout: float) -> list[Finished]:
        import ray

        if self._head_missing():
            time.sleep(min(timeout, HEAD_CHECK_S))
            return []
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
        if finished:
            self._drain(force=True)
            self._forget([f.handle.name for f in finished])
        else:
            self._drain()
        return finished

    def _drain(self, force: bool = False) -> None:
        """Hand the sink each node's progress that changed since the last look (at most
        twice a second, unless ``force``: a node just finished)."""
        if self.sink is None or self._progress is None:
            return
        now = time.monotonic()
        if not force and now - self._drained < DRAIN_S:
            return
        self._drained = now
        if self._head_missing(fresh=True):  # gone since the last look: never asked
            return
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

        changed = {}
        try:
            for key in _internal_kv_list("", namespace=self._progress):
                value = _internal_kv_get(key, namespace=self._progress)
                node = key.decode()
                if value is not None and self._shown.get(node) != value:
                    changed[node] = value
        except Exception:  # the head node is unreachable: progress waits, not the build
            return
        for node, value in changed.items():
            self._shown[node] = value
            if node not in self._begun:  # its worker has it: no longer waiting for one
                self._begun.add(node)
                said = getattr(self.sink, "node", None)  # a reporter's (see scheduler)
                if said is not None:
                    said(node, "running")
            fields = json.loads(value)
            if fields:
                self.sink.update(node, fields)

    def _forget(self, nodes: list[str]) -> None:
        """Drop finished nodes' progress, so that each look reads the running ones only."""
        if self._progress is None:
            return
        for node in nodes:
            self._shown.pop(node, None)
            self._begun.discard(node)
        if self._head_missing(fresh=True):
            return
        from ray.experimental.internal_kv import _internal_kv_del

        for node in nodes:
            try:
                _internal_kv_del(node, namespace=self._progress)
            except Exception:  # the head node is unreachable: shutdown tries once more
                pass

    def shutdown(self) -> None:
        import ray

        if self._lost or self._gone():  # nothing to tell a head that is gone: a call
            # would wait for it
            if self._started_here:
                _kill_local_ray()
            with contextlib.suppress(Exception):
                ray.shutdown()
            return
        if self._progress is not None and ray.is_initialized():
            from ray.experimental.internal_kv import _internal_kv_del

            try:  # a cluster that outlives the build keeps none of its progress
                _internal_kv_del("", del_by_prefix=True, namespace=self._progress)
            except Exception:
                pass
        if self._started_here and ray.is_initialized():
            stop_local_ray()


def _not_started(address: str | None, e: Exception) -> str:
    """Why the build found no Ray cluster, and what to do about it."""
    if not address:
        return (
            f"could not start a local Ray cluster: {type(e).__name__}: {e}; check that Ray "
            "runs here, or build without Ray: --executor inline"
        )
    said = f"could not connect to the Ray cluster at {address}: {type(e).__name__}: {e}"
    if not isinstance(e, _Unanswered) and os.environ.get("RAY_AUTH_MODE") != "token":
        # something answers there: Ray's log above says "InvalidAuthToken" when it is this
        said += (
            "; if the cluster was started with token authentication (the default of `ray "
            "start` since Ray 2.59), set RAY_AUTH_MODE=token, with the cluster's token in "
            "RAY_AUTH_TOKEN or its token file (`ray get-auth-token` prints it)"
        )
    return f"{said}; check the address and that the cluster is up, or build without Ray: --executor inline"


def _largest_machine_cpus() -> float:
    import ray

    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)


QUIET_CLUSTER_ENV = {"RAY_enable_core_worker_task_event_to_gcs": "0"}
"""Ray settings of a build's own cluster, passed to its processes by the environment. Task
events: every process of the cluster sends the state of each task it runs or submits to
the GCS each second, for Ray's state API and dashboard, neither of which a build uses; and
``ray.shutdown()`` waits for the driver's last ones (0.25 s of every build, at times a
second)."""


def start_local_ray(num_cpus: int | None = None) -> None:
    """Start a Ray cluster of this process's own on this machine, bound to 127.0.0.1.

    Its processes, workers included, inherit this process's environment (``HF_*``
    offline switches, ``LLMBUILD_*``, ``PYTHONPATH``). It is not passed again as a job
    ``runtime_env``: workers with a runtime environment of their own cannot be the ones
    Ray starts ahead with the cluster, so the first node would wait a second or more for
    a fresh worker."""
    import ray

    from llmbuild.run.ranks import local_ray_env

    local_ray_env()
    for name, value in QUIET_CLUSTER_ENV.items():  # a user's own setting stands
        os.environ.setdefault(name, value)
    # A local cluster keeps Ray's default token authentication; its notice that the
    # default is on is not for our users.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    with _own_session(), _lean_head():
        ray.init(
            address="local",  # a cluster of its own, never one `ray start` left here
            include_dashboard=False,
            num_cpus=num_cpus,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    from llmbuild.run import reaper

    reaper.watch(_session_leaders())


def _session_leaders() -> list[int]:
    """The processes this process's local cluster started, each the leader of its own
    session and process group (``_own_session``): the GCS, and the raylet with its agents."""
    try:
        from ray._private import worker

        node = worker._global_node
        return [info.process.pid for infos in node.all_processes.values() for info in infos]
    except Exception:  # another Ray's internals, or no cluster
        return []


@contextmanager
def _own_session() -> Iterator[None]:
    """Start Ray's processes in a session of their own. A signal to the build's process
    group (a job scheduler's SIGTERM, ``kill -- -PGID``) then reaches the build alone,
    which stops its cluster as on Ctrl-C; had it reached Ray's GCS too, the build's next
    call to it would block for a minute and end in a crash. Ray blocks SIGINT in its
    processes for the same reason, not SIGTERM. They still end with the build: Ray has
    the kernel kill the GCS and the raylet when their parent dies, and ``reaper`` the
    raylet's agents, which Ray leaves hanging."""
    from ray._private import services

    popen = services.ConsolePopen

    class Detached(popen):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = Detached
    try:
        yield
    finally:
        services.ConsolePopen = popen


UNUSED_HEAD_PROCESSES = ("start_api_server", "start_monitor", "start_log_monitor")
"""The head's processes a build's own cluster does without (``ray._private.node.Node``'s
methods that start them)."""


@contextmanager
def _lean_head() -> Iterator[None]:
    """Start a local cluster without the head's processes a build never uses: the
    dashboard's API server (with the dashboard off it serves only Ray's usage statistics,
    and ``ray.init`` waits for it to come up: 0.6 s of every build on 2 cores), the
    autoscaler's monitor (a local cluster is not autoscaled) and the log monitor (the
    workers' output is not sent to the driver: ``log_to_driver=False``). Ray takes an API
    server that did not start as it does when one fails to. Fewer processes also leave the
    training ranks more of a small machine. A Ray whose ``Node`` lacks one of these
    methods starts that process as before."""
    from ray._private.node import Node

    saved = {name: Node.__dict__[name] for name in UNUSED_HEAD_PROCESSES if name in Node.__dict__}

    def not_started(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    for name in saved:
        setattr(Node, name, not_started)
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(Node, name, method)


def stop_local_ray() -> None:
    """``ray.shutdown()`` of the cluster this process started, its autoscaler monitor killed
    first. Ray stops the raylet and the GCS before the monitor, whose SIGTERM handler then
    reports its own end to the GCS that is gone and hangs until Ray kills it a second
    later: a second of every build. A local cluster is not autoscaled and the monitor
    keeps nothing, so it goes at once (``_lean_head`` starts none where Ray lets it)."""
    import ray

    from llmbuild.run import reaper

    reaper.release()

    try:
        from ray._private import ray_constants, worker

        node = worker._global_node
        for info in node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if node else []:
            info.process.kill()
            info.process.wait(timeout=5)
    except Exception:  # another Ray's internals: its own shutdown still stops everything
        pass
    ray.shutdown()


def _kill_local_ray() -> None:
    """Kill every process of the local cluster this process started, each with the
    session it leads (see ``_own_session``: the raylet's holds its agents and workers):
    its head is gone, so they cannot be stopped in order."""
    import signal

    from llmbuild.run import reaper

    reaper.release()
    for pid in _session_leaders():  # none from another Ray's internals: ray.shutdown() does
        for kill in (os.killpg, os.kill):  # what it can
            with contextlib.suppress(OSError):
                kill(pid, signal.SIGKILL)


class ClusterLost(UserError):
    """The Ray cluster's head stopped answering while nodes were being built."""


def local_cpus(graph: Any) -> int | None:
    """The CPUs a local cluster declares for ``graph``: this machine's cores, or, where a
    training node's ranks (their CPUs left unset) outnumber them, one per rank, so that
    a layout of more ranks than cores still runs here, each rank on one thread. None:
    Ray's own count."""
    import os

    cores = os.cpu_count() or 1
    ranks = [
        node.resources.ranks
        for node in graph
        if node.parallelism is not None and node.parallelism.cpus_per_rank is None
    ]
    most = max(ranks, default=0)
    return most if most > cores else None


def make_executor(
    kind: str,
    sink: ProgressSink | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
) -> InlineExecutor | RayExecutor:
    if kind == "inline":
        return InlineExecutor(sink)
    if kind == "ray":
        return RayExecutor(address=address, sink=sink, num_cpus=num_cpus)
    raise ValueError(f"unknown executor {kind!r}")
