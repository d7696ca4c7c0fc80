"""Groups of ranks: a node function run on N torch.distributed ranks.

Under the Ray executor the ranks are ``ray.train.torch.TorchTrainer`` workers (gloo on
CPU, nccl on GPU); the inline executor runs a single rank in-process. Either way the
function sees an initialised process group and a ``RankInfo``.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from llmbuild.backend import Resources
from llmbuild.errors import UserError
from llmbuild.run.context import RankFn, RankInfo

HEALTH_CHECK_S = 0.25  # how often Ray Train asks the ranks whether they are done or failed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def join_single_rank_group() -> bool:
    """Make this process a one-member gloo group unless it is in one already; True when
    this call created it (and should destroy it)."""
    import torch.distributed as dist

    from llmbuild.run.gloo import share_gloo_device

    if dist.is_initialized():
        return False
    share_gloo_device()
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    return True


def leave_process_groups() -> None:
    """Destroy every process group of this process (megatron's model-parallel groups
    first): a process that hosts node after node (inline, or a reused Ray worker) would
    otherwise keep each node's gloo groups, and their threads, forever."""
    import sys

    from llmbuild.run.gloo import release_gloo_device

    parallel_state = sys.modules.get("megatron.core.parallel_state")
    if parallel_state is not None and parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    release_gloo_device()


def run_inline_ranks(fn: RankFn, config: Any, resources: Resources) -> Path | None:
    """One rank in this process, with a one-member gloo group."""
    if resources.ranks != 1:
        raise UserError(
            f"this node needs {resources.ranks} ranks; the inline executor runs "
            "one: use --executor ray, or set the parallelism sizes to 1"
        )

    join_single_rank_group()
    try:
        return fn(config, RankInfo(rank=0, world_size=1, local_rank=0))
    finally:
        leave_process_groups()


def _rank_main(loop: dict[str, Any]) -> None:
    """The TorchTrainer worker loop: run the node function on the node's rank config,
    bring rank 0's dir back."""
    import ray.train

    from llmbuild.run.gloo import share_gloo_device

    share_gloo_device()  # for the groups megatron-core makes (Ray Train made the default one)
    ctx = ray.train.get_context()
    info = RankInfo(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank())
    if info.rank == 0:  # each start of the group (Ray Train restarts it after a failure)
        _note_start(Path(loop["log"]), info.world_size)
    out = loop["fn"](loop["config"], info)
    if info.rank == 0 and out is not None:
        ray.train.report(
            {"rank0_output": True}, checkpoint=ray.train.Checkpoint.from_directory(str(out))
        )
    else:
        ray.train.report({"rank0_output": False})


def _note_start(log: Path, ranks: int) -> None:
    """A line in the node's log (when this machine has it) saying the ranks started, and
    from which checkpoint they resume."""
    import time

    from llmbuild.store.store import checkpoint_step

    if not log.parent.is_dir():
        return
    step = checkpoint_step(log.parent)
    resume = "" if step is None else f", resuming from step {step}"
    with open(log, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} INFO {ranks} ranks started{resume}\n")


def run_ray_ranks(
    fn: RankFn,
    config: Any,
    resources: Resources,
    work_dir: Path,
    name: str,
    max_failures: int = 2,
) -> Path | None:
    """``resources.ranks`` TorchTrainer workers; retried up to ``max_failures`` times."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    problem = unplaceable(resources, work_dir)
    if problem:
        raise UserError(problem)

    # Ray Train polls its ranks every 2 s by default: each stage would end up to 2 s after
    # its ranks, and a failed rank be noticed as late. A user's own setting wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(HEALTH_CHECK_S))
    per_worker = {"CPU": resources.cpus}
    if resources.gpus:
        per_worker["GPU"] = resources.gpus
    trainer = TorchTrainer(
        _rank_main,
        train_loop_config={"config": config, "fn": fn, "log": str(work_dir / "node.log")},
        scaling_config=ScalingConfig(
            num_workers=resources.ranks, use_gpu=resources.gpus > 0, resources_per_worker=per_worker
        ),
        torch_config=TorchConfig(backend="nccl" if resources.gpus else "gloo"),
        run_config=RunConfig(
            name=name.replace(":", "_").replace("@", "_"),
            storage_path=str(work_dir / "ray_train"),
            failure_config=_failure_config(max_failures),
        ),
    )
    try:
        result = trainer.fit()
        if result.error is not None:
            raise result.error
    except Exception as e:
        problem = unplaceable(resources, work_dir)
        if problem:  # a node holding ranks went away, and the rest cannot hold them all
            cause = " ".join(str(e).split())[:300]
            raise UserError(f"{problem} (the ranks stopped: {cause})") from None
        mistake = _user_error(e)
        if mistake is not None:  # a rank's message for the user, not Ray Train's wrapping
            raise UserError(str(mistake)) from None
        raise
    if result.checkpoint is None:
        return None
    local = Path(tempfile.mkdtemp(prefix="ranks-", dir=work_dir))
    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, local, dirs_exist_ok=True)
    return local


def _user_error(e: BaseException, depth: int = 0) -> UserError | None:
    """The ``UserError`` a rank raised, found inside Ray Train's error (its workers'
    failures, a task error's cause), if there is one."""
    if isinstance(e, UserError):
        return e
    if depth > 4:
        return None
    inner = [*getattr(e, "worker_failures", {}).values(), getattr(e, "cause", None)]
    inner.append(e.__cause__)
    for cause in inner:
        if isinstance(cause, BaseException):
            found = _user_error(cause, depth + 1)
            if found is not None:
                return found
    return None


def unplaceable(resources: Resources, work_dir: Path | None = None) -> str | None:
    """Why the cluster's live nodes cannot hold a node's ranks (each on one machine), or a
    one-process node; None when they can. Ray would otherwise wait for machines that may
    never come. ``work_dir``, the node's, tells whether a checkpoint waits there."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return cannot_place(resources, nodes, work_dir)


def cannot_place(
    resources: Resources, nodes: list[dict[str, float]], work_dir: Path | None = None
) -> str | None:
    """``unplaceable`` on the resources of live nodes, as ``ray.nodes()`` lists them."""

    def fits(node: dict[str, float]) -> int:
        n = int(node.get("CPU", 0.0) // resources.cpus) if resources.cpus else resources.ranks
        if resources.gpus:
            n = min(n, int(node.get("GPU", 0.0) // resources.gpus))
        return n

    if sum(fits(node) for node in nodes) >= resources.ranks:
        return None
    cpus = [node.get("CPU", 0.0) for node in nodes]
    gpus = [node.get("GPU", 0.0) for node in nodes]
    has = f"{sum(cpus):g} CPUs" + (f" and {sum(gpus):g} GPUs" if resources.gpus else "")
    largest = f"{max(cpus, default=0):g} CPUs" + (
        f" and {max(gpus, default=0):g} GPUs" if resources.gpus else ""
    )
    what = "this node's ranks" if resources.ranks > 1 else "this node"
    if resources.gpus and not any(gpus):  # no machine will do: more of them would not help
        fix = (
            'Add machines with GPUs, or set parallelism.device = "auto" (a GPU where the '
            'machine has one, else its CPUs) or "cpu"'
        )
    else:
        fix = "Add machines, or lower parallelism (data, tensor, pipeline) or cpus_per_rank"
    return (
        f"the Ray cluster cannot hold {what}, {resources}: its {len(nodes)} live "
        f"node(s) have {has} in all, the largest {largest}. {fix}{_kept(work_dir)}"
    )


def _kept(work_dir: Path | None) -> str:
    """What becomes of the checkpoint a node's work dir holds, if it holds one."""
    from llmbuild.store.store import checkpoint_step

    step = None if work_dir is None else checkpoint_step(work_dir)
    if step is None:
        return ""
    return f"; the checkpoint the stage wrote at step {step} is kept for the next build"


def _failure_config(max_failures: int) -> Any:
    """Ranks that fail are restarted from the last checkpoint up to ``max_failures`` times;
    a node that goes away counts as such a failure, and ranks that cannot be placed again
    (the cluster lost the nodes) fail the node after one more try instead of waiting for
    nodes forever (Ray Train's defaults for both are unlimited)."""
    import inspect

    from ray.train import FailureConfig

    known = inspect.signature(FailureConfig).parameters
    limits = {"max_preemption_failures": 0, "controller_failure_limit": 1}
    return FailureConfig(
        max_failures=max_failures, **{k: v for k, v in limits.items() if k in known}
    )


def local_ray_env() -> None:
    """Make a local Ray cluster bind 127.0.0.1 instead of the machine's interface.

    Ray reads this variable into a constant when it is imported (and passes it on to the
    processes it starts), so the constant is set too if Ray is already imported."""
    import sys

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False
