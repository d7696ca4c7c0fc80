"""Resumable checkpoints of a training stage, in the node's work dir.

One file per tensor- and pipeline-parallel rank, written by data-parallel rank 0 (its
replicas hold the same state); with the distributed optimizer one per data-parallel rank
as well, since each holds its own shard of the optimizer state. A checkpoint is resumed
only at the layout (and optimizer) it was written at, and only when every rank found
the same step: otherwise training starts over.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def checkpoint_path(work: Path, distributed_optimizer: bool) -> Path:
    from megatron.core import parallel_state

    name = (
        f"checkpoint-tp{parallel_state.get_tensor_model_parallel_rank()}"
        f"-pp{parallel_state.get_pipeline_model_parallel_rank()}"
    )
    if distributed_optimizer:
        name += f"-dp{parallel_state.get_data_parallel_rank()}"
    return work / f"{name}.pt"


def writes_checkpoint(distributed_optimizer: bool) -> bool:
    """Whether this rank writes a checkpoint file."""
    from megatron.core import parallel_state

    return distributed_optimizer or parallel_state.get_data_parallel_rank() == 0


def unreadable_checkpoints(work: Path) -> list[str]:
    """The checkpoint files in ``work`` that are not whole: cut short, or bytes changed
    (the zip's CRCs say so, read without torch and without holding the tensors)."""
    import zipfile

    bad = []
    for path in sorted(work.glob("checkpoint-*.pt")):
        try:
            with zipfile.ZipFile(path) as z:
                broken = z.testzip()
        except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
            broken = str(e) or type(e).__name__
        if broken is not None:
            bad.append(f"{path.name} ({broken})")
    return bad


def random_states() -> dict[str, Any]:
    """Every random stream this rank draws from, to resume where it was: torch's CPU
    generator, and with CUDA the device's generator and megatron's tensor-parallel
    tracker (dropout outside and inside tensor-parallel regions). Without CUDA the
    tracker's states are the CPU generator (``cpu.py``)."""
    import torch

    states = {"rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        states["cuda_rng"] = torch.cuda.get_rng_state()
        states["tracker_rng"] = get_cuda_rng_tracker().get_states()
    return states


def restore_random_states(state: dict[str, Any]) -> None:
    """Set the streams ``random_states`` saved (a checkpoint written without CUDA has
    only the CPU's: resumed on a GPU, the device's streams start from the seed)."""
    import torch

    torch.set_rng_state(state["rng"])
    if torch.cuda.is_available() and "cuda_rng" in state:
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        torch.cuda.set_rng_state(state["cuda_rng"])
        get_cuda_rng_tracker().set_states(state["tracker_rng"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Written to a temporary file and renamed into place."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, layout: dict[str, Any]) -> dict[str, Any] | None:
    """This rank's checkpoint when every rank has one of ``layout`` at the same step (a
    collective call), else None."""
    import torch
    import torch.distributed as dist

    # (one cut short or changed was removed before the ranks started: unreadable_checkpoints)
    state = torch.load(path, weights_only=False) if path.exists() else None
    if state is not None and state.get("layout") != layout:
        state = None
    step = state["step"] if state is not None else 0
    steps = torch.tensor([step, -step], dtype=torch.int64)
    dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    agreed = int(steps[0]) == -int(steps[1])  # the largest step is the smallest
    return state if agreed and step > 0 else None
